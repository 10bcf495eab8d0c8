//! Request bodies, serialised once before the load starts and handed out round-robin as cheap `Bytes`
//! clones: a file, a folder of files, random landmark sequences (the sign model's format) or a KServe v2
//! tensor request built from the model's metadata.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
};

use bytes::Bytes;
use rand::{rngs::Xoshiro256PlusPlus, RngExt, SeedableRng};
use serde::Deserialize;
use thiserror::Error;

/// Bodies could not be prepared.
#[derive(Debug, Error)]
pub enum BodyError {
    /// A body file or folder could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The folder holds no regular file.
    #[error("{0} holds no body file")]
    EmptyFolder(PathBuf),
    /// The KServe v2 model metadata is not what the protocol describes.
    #[error("model metadata: {0}")]
    Metadata(String),
}

/// The bodies of a run, handed out in turn.
#[derive(Debug)]
pub struct BodySet {
    bodies: Vec<Bytes>,
    next: AtomicUsize,
}

impl BodySet {
    /// A set over prepared bodies; an empty list gets one empty body.
    pub fn new(mut bodies: Vec<Bytes>) -> Self {
        if bodies.is_empty() {
            bodies.push(Bytes::new());
        }
        Self { bodies, next: AtomicUsize::new(0) }
    }

    /// The next body, round-robin.
    pub fn next_body(&self) -> Bytes {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.bodies[i % self.bodies.len()].clone()
    }

    /// How many distinct bodies there are.
    pub fn len(&self) -> usize {
        self.bodies.len()
    }

    /// Always false: a set holds at least one body.
    pub fn is_empty(&self) -> bool {
        self.bodies.is_empty()
    }

    /// Reads one file, or every regular file of a folder in name order (hidden files skipped).
    ///
    /// # Errors
    /// [`BodyError::Io`] when the path cannot be read, [`BodyError::EmptyFolder`] for a folder without files.
    pub fn from_path(path: &Path) -> Result<Self, BodyError> {
        let io = |source| BodyError::Io { path: path.to_path_buf(), source };
        if !path.is_dir() {
            return Ok(Self::new(vec![Bytes::from(std::fs::read(path).map_err(io)?)]));
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && !p.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(BodyError::EmptyFolder(path.to_path_buf()));
        }
        let bodies = files
            .iter()
            .map(|file| {
                std::fs::read(file).map(Bytes::from).map_err(|source| BodyError::Io { path: file.clone(), source })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self::new(bodies))
    }

    /// `count` random landmark requests `{"landmarks": [[[x, y, z] x points] x frames]}` with coordinates in
    /// [0, 1), the same for the same seed.
    pub fn landmarks(frames: usize, points: usize, count: usize, seed: u64) -> Self {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let bodies = (0..count.max(1))
            .map(|_| {
                let mut text = String::with_capacity(frames * points * 24 + 16);
                text.push_str("{\"landmarks\":[");
                for f in 0..frames {
                    text.push_str(if f == 0 { "[" } else { ",[" });
                    for p in 0..points {
                        let [x, y, z]: [f32; 3] = rng.random();
                        let sep = if p == 0 { "" } else { "," };
                        let _ = write!(text, "{sep}[{x:.4},{y:.4},{:.4}]", z - 0.5);
                    }
                    text.push(']');
                }
                text.push_str("]}");
                Bytes::from(text)
            })
            .collect();
        Self::new(bodies)
    }

    /// `count` KServe v2 inference requests with one random tensor per input of the model's metadata
    /// (`GET /v2/models/{m}`); a dynamic dimension (-1) becomes 1.
    ///
    /// # Errors
    /// [`BodyError::Metadata`] when the metadata is not JSON, has no inputs, or names a datatype other than
    /// the numeric and boolean ones.
    pub fn kserve_v2(metadata: &[u8], count: usize, seed: u64) -> Result<Self, BodyError> {
        let meta: ModelMetadata = serde_json::from_slice(metadata).map_err(|e| BodyError::Metadata(e.to_string()))?;
        if meta.inputs.is_empty() {
            return Err(BodyError::Metadata("the model lists no inputs".into()));
        }
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut bodies = Vec::with_capacity(count.max(1));
        for _ in 0..count.max(1) {
            let inputs =
                meta.inputs.iter().map(|input| input.random_tensor(&mut rng)).collect::<Result<Vec<_>, _>>()?;
            let body = serde_json::json!({ "inputs": inputs });
            bodies.push(Bytes::from(body.to_string()));
        }
        Ok(Self::new(bodies))
    }
}

/// The part of KServe v2 model metadata a request is built from.
#[derive(Debug, Deserialize)]
struct ModelMetadata {
    #[serde(default)]
    inputs: Vec<TensorMetadata>,
}

#[derive(Debug, Deserialize)]
struct TensorMetadata {
    name: String,
    datatype: String,
    shape: Vec<i64>,
}

impl TensorMetadata {
    fn random_tensor(&self, rng: &mut Xoshiro256PlusPlus) -> Result<serde_json::Value, BodyError> {
        let shape: Vec<i64> = self.shape.iter().map(|&d| if d < 0 { 1 } else { d }).collect();
        let elements = shape.iter().product::<i64>().max(0) as usize;
        let data: Vec<serde_json::Value> = match self.datatype.as_str() {
            "FP16" | "FP32" | "FP64" | "BF16" => {
                (0..elements).map(|_| serde_json::json!((rng.random::<f32>() * 1e4).round() / 1e4)).collect()
            }
            "INT8" | "INT16" | "INT32" | "INT64" | "UINT8" | "UINT16" | "UINT32" | "UINT64" => {
                (0..elements).map(|_| serde_json::json!(rng.random_range(0..10u32))).collect()
            }
            "BOOL" => (0..elements).map(|_| serde_json::json!(rng.random::<bool>())).collect(),
            other => {
                return Err(BodyError::Metadata(format!(
                    "input `{}` has datatype {other}, which cannot be generated; pass --body",
                    self.name
                )))
            }
        };
        Ok(serde_json::json!({
            "name": self.name,
            "shape": shape,
            "datatype": self.datatype,
            "data": data,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn landmarks_have_the_requested_shape_and_are_seeded() {
        let set = BodySet::landmarks(30, 21, 2, 7);
        let body: serde_json::Value = serde_json::from_slice(&set.next_body()).expect("json");
        let frames = body["landmarks"].as_array().expect("frames");
        assert_eq!(frames.len(), 30);
        assert_eq!(frames[0].as_array().expect("points").len(), 21);
        assert_eq!(frames[0][0].as_array().expect("xyz").len(), 3);
        assert_eq!(BodySet::landmarks(30, 21, 2, 7).next_body(), BodySet::landmarks(30, 21, 2, 7).next_body());
        assert_ne!(set.next_body(), set.next_body(), "round-robin over two bodies");
    }

    #[test]
    fn kserve_request_follows_the_metadata() {
        let meta = br#"{"name":"signnet","versions":["1"],"platform":"onnxruntime_onnx",
            "inputs":[{"name":"landmarks","datatype":"FP32","shape":[-1,30,21,3]}],"outputs":[]}"#;
        let set = BodySet::kserve_v2(meta, 1, 1).expect("bodies");
        let body: serde_json::Value = serde_json::from_slice(&set.next_body()).expect("json");
        let input = &body["inputs"][0];
        assert_eq!(input["name"], "landmarks");
        assert_eq!(input["shape"], serde_json::json!([1, 30, 21, 3]));
        assert_eq!(input["data"].as_array().expect("data").len(), 30 * 21 * 3);
        let bytes_meta = br#"{"inputs":[{"name":"text","datatype":"BYTES","shape":[1]}]}"#;
        assert!(BodySet::kserve_v2(bytes_meta, 1, 1).is_err());
    }

    #[test]
    fn folder_bodies_go_round_robin_in_name_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("b.json"), "B").expect("write");
        std::fs::write(dir.path().join("a.json"), "A").expect("write");
        std::fs::write(dir.path().join(".hidden"), "H").expect("write");
        let set = BodySet::from_path(dir.path()).expect("bodies");
        let sent: Vec<Bytes> = (0..3).map(|_| set.next_body()).collect();
        assert_eq!(sent, vec![Bytes::from("A"), Bytes::from("B"), Bytes::from("A")]);
        let empty = tempfile::tempdir().expect("tempdir");
        assert!(matches!(BodySet::from_path(empty.path()), Err(BodyError::EmptyFolder(_))));
    }
}
