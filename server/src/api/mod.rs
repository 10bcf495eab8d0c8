//! The handlers, one module per API: each turns a routed request into a [`Reply`](crate::reply::Reply) or an
//! [`ApiError`](crate::error::ApiError), which the router renders in the request's protocol. Handlers know
//! neither the router nor the transport.

pub mod description;
pub mod kserve;
pub mod management;
pub mod metrics;
pub mod predictions;
pub mod token;
