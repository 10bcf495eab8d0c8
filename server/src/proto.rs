//! The messages, servers and clients generated from `server/proto/` (committed in `proto/`; `tests/proto.rs`
//! checks them and `make proto` writes them): KServe v2's
//! `inference.GRPCInferenceService` (as Triton serves it) and TorchServe's inference and management services.
//! The modules follow the protos' packages, which the generated code names each other by.

#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic, clippy::nursery)]

/// KServe v2's gRPC protocol, package `inference`.
pub mod inference {
    include!("proto/inference.rs");
}

/// `google.rpc.Status`, which TorchServe's inference proto imports.
pub mod google {
    /// Package `google.rpc`.
    pub mod rpc {
        include!("proto/google.rpc.rs");
    }
}

/// TorchServe's packages, `org.pytorch.serve.grpc.*`.
pub mod org {
    /// `org.pytorch`.
    pub mod pytorch {
        /// `org.pytorch.serve`.
        pub mod serve {
            /// `org.pytorch.serve.grpc`.
            pub mod grpc {
                /// TorchServe's gRPC inference API.
                pub mod inference {
                    include!("proto/org.pytorch.serve.grpc.inference.rs");
                }
                /// TorchServe's gRPC management API.
                pub mod management {
                    include!("proto/org.pytorch.serve.grpc.management.rs");
                }
            }
        }
    }
}

pub use org::pytorch::serve::grpc::{inference as torchserve_inference, management as torchserve_management};
