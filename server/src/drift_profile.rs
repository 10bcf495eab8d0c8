//! `ferroserve drift-profile`: a model's drift reference made from a file of example requests, one landmark body
//! (`{"landmarks": [...]}`, as `POST /predictions` takes) per line. Each request is validated as the server
//! validates it, run through the model loaded as the server loads it, and its features and top-1 prediction
//! go into the profile the server reads at start-up (`<model>.drift.json` in the model store, or the model's
//! `driftProfile`).

use std::{
    io::BufRead,
    path::{Path, PathBuf},
};

use ferroserve_engine::{metrics::EngineMetrics, request::InferResult, Model};

use crate::{
    config::Config,
    drift::{features::FeatureSet, profile::Profile, Observation},
    landmarks::{self, LandmarkShape},
    load,
};

/// What `drift-profile` is asked to do.
#[derive(Debug, Clone)]
pub struct ProfileJob {
    /// The model's name.
    pub model: String,
    /// The file or folder in the model store to load (default: the name).
    pub entry: Option<String>,
    /// The requests, one landmark body per line.
    pub requests: PathBuf,
}

/// Requests run at once (their features are computed while the model runs the others).
const IN_FLIGHT: usize = 64;

/// Builds the profile of `job` with the models and settings of `config`.
///
/// # Errors
/// A message naming the model that cannot load, the file that cannot be read, or the line that is not a valid
/// request.
pub fn build(config: &Config, job: &ProfileJob) -> Result<Profile, String> {
    let version = config.version_of(&job.model);
    let entry = job.entry.as_deref().unwrap_or(&job.model);
    let model = load::load_model(config, (&job.model, &version), entry, &EngineMetrics::detached())
        .map_err(|e| e.to_string())?;
    let result = observe_file(&model, &job.requests);
    model.close();
    model.shutdown();
    let (names, observations) = result?;
    let source =
        job.requests.file_name().map_or_else(|| job.requests.display().to_string(), |f| f.to_string_lossy().into());
    Profile::build((&job.model, &version), source, &names, &observations)
        .map_err(|e| format!("{}: {e}", job.requests.display()))
}

/// Runs every request of the file through `model`: the feature names and one observation per request.
fn observe_file(model: &Model, path: &Path) -> Result<(Vec<String>, Vec<Observation>), String> {
    let shape = LandmarkShape::of(model.spec())
        .ok_or_else(|| format!("model {} does not take hand landmarks [frames, points, 3]", model.name()))?;
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut names = None;
    let mut observations = Vec::new();
    let mut pending = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let at = |message: String| format!("{} line {}: {message}", path.display(), i + 1);
        let mut line = line.map_err(|e| at(e.to_string()))?.into_bytes();
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let request = landmarks::parse(&mut line, shape).map_err(|e| at(e.message))?;
        let set = FeatureSet::for_shape(&request.shape);
        let features = set.compute(&request.input, &request.shape);
        names.get_or_insert_with(|| set.names());
        let reply = model.submit_shaped(request.input, Some(&request.shape), None).map_err(|e| at(e.to_string()))?;
        pending.push((features, reply));
        if pending.len() >= model.options().queue_size.clamp(1, IN_FLIGHT) {
            collect(&mut pending, &mut observations)?;
        }
    }
    collect(&mut pending, &mut observations)?;
    let names = names.ok_or_else(|| format!("{} has no requests", path.display()))?;
    Ok((names, observations))
}

type Waiting = (crate::drift::features::Features, tokio::sync::oneshot::Receiver<InferResult>);

/// Waits for the pending requests' answers and adds their observations.
fn collect(pending: &mut Vec<Waiting>, observations: &mut Vec<Observation>) -> Result<(), String> {
    for (features, reply) in pending.drain(..) {
        let output = reply.blocking_recv().map_err(|_| "the model stopped".to_string())?.map_err(|e| e.to_string())?;
        let observation = Observation::of(features, &output.output).ok_or("the model answered nothing")?;
        observations.push(observation);
    }
    Ok(())
}
