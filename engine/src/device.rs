//! Which device a model runs on. A [`DeviceRequest`] says what was asked (`TORCH_DEVICE`, or a model's
//! `deviceType` and `deviceIds`), an [`Availability`] what the machine has, and [`select`] joins them by a pure
//! rule, so that every case can be tested with injected availability on a machine without a GPU.
//!
//! Detection follows the seed's order: CUDA, then MPS, then the CPU. Asking for a device that is not there is an
//! error, never a silent fall back to the CPU. Errors say what is missing; the caller says who asked.

use std::{fmt, str::FromStr, sync::OnceLock};

use crate::backend::Device;

/// What was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceRequest {
    /// The best device there is: CUDA, then MPS, then the CPU.
    #[default]
    Auto,
    /// The host CPU.
    Cpu,
    /// An NVIDIA GPU: this one, or the first.
    Cuda(Option<usize>),
    /// The Apple-silicon GPU.
    Mps,
    /// Any GPU: CUDA, then MPS (TorchServe's `deviceType: gpu` without `deviceIds`).
    Gpu,
}

/// A device request that cannot be met or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// Not one of the accepted spellings.
    #[error("`{0}` is not a device: use cpu, cuda, cuda:N or mps")]
    Unknown(String),
    /// CUDA was asked for and there is none.
    #[error("no CUDA device is available")]
    NoCuda(DeviceRequest),
    /// A GPU index beyond the ones there are.
    #[error("there is no GPU {index}: {count} CUDA device(s) are available")]
    NoSuchGpu {
        /// What was asked.
        request: DeviceRequest,
        /// The index asked for.
        index: usize,
        /// How many CUDA devices there are.
        count: usize,
    },
    /// MPS was asked for and is not available.
    #[error("Apple's MPS is not available")]
    NoMps(DeviceRequest),
    /// A GPU was asked for and there is neither CUDA nor MPS.
    #[error("neither CUDA nor MPS is available")]
    NoGpu(DeviceRequest),
    /// `deviceType` or `deviceIds` of a model that make no sense together.
    #[error("{0}")]
    ModelKeys(String),
}

impl FromStr for DeviceRequest {
    type Err = DeviceError;

    /// Parses `TORCH_DEVICE`: `cpu`, `cuda`, `cuda:N` or `mps` (any case); `auto` or nothing means detection.
    fn from_str(text: &str) -> Result<Self, DeviceError> {
        let lower = text.trim().to_ascii_lowercase();
        match lower.as_str() {
            "" | "auto" => Ok(Self::Auto),
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(None)),
            "mps" => Ok(Self::Mps),
            other => other
                .strip_prefix("cuda:")
                .and_then(|index| index.parse().ok())
                .map(|index| Self::Cuda(Some(index)))
                .ok_or_else(|| DeviceError::Unknown(text.to_string())),
        }
    }
}

impl fmt::Display for DeviceRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(None) => f.write_str("cuda"),
            Self::Cuda(Some(index)) => write!(f, "cuda:{index}"),
            Self::Mps => f.write_str("mps"),
            Self::Gpu => f.write_str("gpu"),
        }
    }
}

impl DeviceRequest {
    /// The request of one model from TorchServe's keys, over `default` (what `TORCH_DEVICE` or detection gives
    /// every other model). `deviceType: cpu` asks for the CPU; `gpu` for the GPU `default` names when it names
    /// one, else any GPU; `deviceIds` asks for CUDA, its first entry standing for the list ([`select_for_model`]
    /// spreads the workers over all of them).
    ///
    /// # Errors
    /// [`DeviceError::ModelKeys`] for an unknown `deviceType`, or `deviceIds` with `deviceType: cpu` or empty.
    pub fn for_model(
        default: Self,
        device_type: Option<&str>,
        device_ids: Option<&[usize]>,
    ) -> Result<Self, DeviceError> {
        let first_id = match device_ids {
            Some([]) => return Err(DeviceError::ModelKeys("deviceIds is empty".into())),
            Some([first, ..]) => Some(*first),
            None => None,
        };
        match (device_type, first_id) {
            (None, None) => Ok(default),
            (Some("cpu"), None) => Ok(Self::Cpu),
            (Some("cpu"), Some(_)) => Err(DeviceError::ModelKeys("deviceIds needs deviceType gpu, not cpu".into())),
            (Some("gpu") | None, Some(index)) => Ok(Self::Cuda(Some(index))),
            (Some("gpu"), None) => Ok(match default {
                Self::Cuda(_) | Self::Mps => default,
                Self::Auto | Self::Cpu | Self::Gpu => Self::Gpu,
            }),
            (Some(other), _) => Err(DeviceError::ModelKeys(format!("deviceType `{other}` is not cpu or gpu"))),
        }
    }
}

/// What the machine has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Availability {
    /// Number of CUDA devices.
    pub cuda_devices: usize,
    /// Whether Apple's MPS is usable.
    pub mps: bool,
}

impl Availability {
    /// Only the CPU.
    #[must_use]
    pub fn cpu_only() -> Self {
        Self::default()
    }

    /// What the machine has (once per process): CUDA devices as NVIDIA's driver counts them ([`cuda_devices`]), and
    /// MPS as libtorch sees it (macOS with the `torch` feature: the TorchScript plugin is opened to ask).
    #[must_use]
    pub fn detect() -> Self {
        static DETECTED: OnceLock<Availability> = OnceLock::new();
        *DETECTED.get_or_init(|| Availability { cuda_devices: cuda_devices(), mps: mps() })
    }
}

#[cfg(all(feature = "torch", target_os = "macos"))]
fn mps() -> bool {
    crate::backend::torch::has_mps()
}

#[cfg(not(all(feature = "torch", target_os = "macos")))]
fn mps() -> bool {
    false
}

/// See [`crate::cuda::cuda_devices`].
pub use crate::cuda::cuda_devices;

/// The device that `request` gets on a machine with `available`.
///
/// # Errors
/// [`DeviceError`] when the request names a device the machine does not have.
pub fn select(request: DeviceRequest, available: Availability) -> Result<Device, DeviceError> {
    let first_gpu = || {
        if available.cuda_devices > 0 {
            Some(Device::Cuda(0))
        } else if available.mps {
            Some(Device::Mps)
        } else {
            None
        }
    };
    match request {
        DeviceRequest::Auto => Ok(first_gpu().unwrap_or(Device::Cpu)),
        DeviceRequest::Cpu => Ok(Device::Cpu),
        DeviceRequest::Gpu => first_gpu().ok_or(DeviceError::NoGpu(request)),
        DeviceRequest::Mps if available.mps => Ok(Device::Mps),
        DeviceRequest::Mps => Err(DeviceError::NoMps(request)),
        DeviceRequest::Cuda(_) if available.cuda_devices == 0 => Err(DeviceError::NoCuda(request)),
        DeviceRequest::Cuda(None) => Ok(Device::Cuda(0)),
        DeviceRequest::Cuda(Some(index)) if index < available.cuda_devices => Ok(Device::Cuda(index)),
        DeviceRequest::Cuda(Some(index)) => {
            Err(DeviceError::NoSuchGpu { request, index, count: available.cuda_devices })
        }
    }
}

/// Every device `request` can mean on a machine with `available`, for spreading a model's workers: all CUDA GPUs
/// for `Auto`, `Gpu` and `cuda` without an index (TorchServe spreads workers over every GPU), else the one device
/// [`select`] picks.
///
/// # Errors
/// As [`select`].
pub fn select_all(request: DeviceRequest, available: Availability) -> Result<Vec<Device>, DeviceError> {
    let first = select(request, available)?;
    let every_gpu = matches!(request, DeviceRequest::Auto | DeviceRequest::Gpu | DeviceRequest::Cuda(None));
    Ok(if every_gpu && matches!(first, Device::Cuda(_)) {
        (0..available.cuda_devices).map(Device::Cuda).collect()
    } else {
        vec![first]
    })
}

/// The devices a model's workers run on, worker `w` on the `w % n`-th: its `deviceIds` when given (each must be
/// there; repeats count once), else every device its `request` ([`DeviceRequest::for_model`]) can mean
/// ([`select_all`]).
///
/// # Errors
/// As [`select`].
pub fn select_for_model(
    request: DeviceRequest,
    device_ids: Option<&[usize]>,
    available: Availability,
) -> Result<Vec<Device>, DeviceError> {
    let Some(ids) = device_ids else {
        return select_all(request, available);
    };
    let mut devices = Vec::with_capacity(ids.len());
    for &id in ids {
        let device = select(DeviceRequest::Cuda(Some(id)), available)?;
        if !devices.contains(&device) {
            devices.push(device);
        }
    }
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CPU: Availability = Availability { cuda_devices: 0, mps: false };
    const ONE_GPU: Availability = Availability { cuda_devices: 1, mps: false };
    const TWO_GPUS: Availability = Availability { cuda_devices: 2, mps: false };
    const MAC: Availability = Availability { cuda_devices: 0, mps: true };

    fn parse(text: &str) -> DeviceRequest {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn torch_device_values_parse() {
        assert_eq!(parse(""), DeviceRequest::Auto);
        assert_eq!(parse("auto"), DeviceRequest::Auto);
        assert_eq!(parse("cpu"), DeviceRequest::Cpu);
        assert_eq!(parse(" CUDA "), DeviceRequest::Cuda(None));
        assert_eq!(parse("cuda:3"), DeviceRequest::Cuda(Some(3)));
        assert_eq!(parse("mps"), DeviceRequest::Mps);
        for bad in ["gpu", "tpu", "cuda:", "cuda:-1", "cuda:x", "cuda0", "cpu:0"] {
            let err = bad.parse::<DeviceRequest>().expect_err(bad);
            assert_eq!(err, DeviceError::Unknown(bad.into()));
            assert!(err.to_string().contains("cpu, cuda, cuda:N or mps"), "{err}");
        }
    }

    #[test]
    fn detection_prefers_cuda_then_mps_then_cpu() {
        assert_eq!(select(DeviceRequest::Auto, TWO_GPUS), Ok(Device::Cuda(0)));
        assert_eq!(select(DeviceRequest::Auto, Availability { cuda_devices: 1, mps: true }), Ok(Device::Cuda(0)));
        assert_eq!(select(DeviceRequest::Auto, MAC), Ok(Device::Mps));
        assert_eq!(select(DeviceRequest::Auto, CPU), Ok(Device::Cpu));
    }

    #[test]
    fn overrides_win_when_the_device_is_there() {
        assert_eq!(select(parse("cpu"), TWO_GPUS), Ok(Device::Cpu));
        assert_eq!(select(parse("cpu"), MAC), Ok(Device::Cpu));
        assert_eq!(select(parse("cuda"), ONE_GPU), Ok(Device::Cuda(0)));
        assert_eq!(select(parse("cuda:1"), TWO_GPUS), Ok(Device::Cuda(1)));
        assert_eq!(select(parse("mps"), MAC), Ok(Device::Mps));
    }

    #[test]
    fn missing_devices_are_errors_not_fallbacks() {
        assert_eq!(select(parse("cuda"), CPU), Err(DeviceError::NoCuda(DeviceRequest::Cuda(None))));
        assert_eq!(select(parse("cuda:0"), MAC), Err(DeviceError::NoCuda(DeviceRequest::Cuda(Some(0)))));
        let err = select(parse("cuda:2"), TWO_GPUS).expect_err("no third GPU");
        assert_eq!(err.to_string(), "there is no GPU 2: 2 CUDA device(s) are available");
        assert_eq!(select(parse("mps"), ONE_GPU), Err(DeviceError::NoMps(DeviceRequest::Mps)));
        assert_eq!(select(DeviceRequest::Gpu, CPU), Err(DeviceError::NoGpu(DeviceRequest::Gpu)));
    }

    #[test]
    fn model_keys_choose_per_model() {
        let model = |default, ty: Option<&str>, ids: Option<&[usize]>| DeviceRequest::for_model(default, ty, ids);
        assert_eq!(model(DeviceRequest::Auto, None, None), Ok(DeviceRequest::Auto));
        assert_eq!(model(DeviceRequest::Mps, None, None), Ok(DeviceRequest::Mps));
        assert_eq!(model(DeviceRequest::Auto, Some("cpu"), None), Ok(DeviceRequest::Cpu));
        assert_eq!(model(DeviceRequest::Cuda(Some(1)), Some("cpu"), None), Ok(DeviceRequest::Cpu));
        assert_eq!(model(DeviceRequest::Auto, Some("gpu"), None), Ok(DeviceRequest::Gpu));
        assert_eq!(model(DeviceRequest::Cpu, Some("gpu"), None), Ok(DeviceRequest::Gpu));
        assert_eq!(model(DeviceRequest::Cuda(Some(1)), Some("gpu"), None), Ok(DeviceRequest::Cuda(Some(1))));
        assert_eq!(model(DeviceRequest::Auto, Some("gpu"), Some(&[1, 0])), Ok(DeviceRequest::Cuda(Some(1))));
        assert_eq!(model(DeviceRequest::Cpu, None, Some(&[0])), Ok(DeviceRequest::Cuda(Some(0))));
        for (ty, ids) in [(Some("cpu"), Some(&[0][..])), (Some("tpu"), None), (Some("gpu"), Some(&[][..]))] {
            assert!(matches!(model(DeviceRequest::Auto, ty, ids), Err(DeviceError::ModelKeys(_))), "{ty:?} {ids:?}");
        }
    }

    #[test]
    fn model_requests_meet_the_machine() {
        let gpu = DeviceRequest::for_model(DeviceRequest::Auto, Some("gpu"), None).expect("valid keys");
        assert_eq!(select(gpu, MAC), Ok(Device::Mps));
        assert_eq!(select(gpu, ONE_GPU), Ok(Device::Cuda(0)));
        assert_eq!(select(gpu, CPU), Err(DeviceError::NoGpu(DeviceRequest::Gpu)));
        let second = DeviceRequest::for_model(DeviceRequest::Auto, Some("gpu"), Some(&[1])).expect("valid keys");
        assert_eq!(select(second, TWO_GPUS), Ok(Device::Cuda(1)));
        assert!(matches!(select(second, ONE_GPU), Err(DeviceError::NoSuchGpu { index: 1, count: 1, .. })));
    }

    #[test]
    fn workers_spread_over_every_gpu_a_request_can_mean() {
        let both = vec![Device::Cuda(0), Device::Cuda(1)];
        assert_eq!(select_all(DeviceRequest::Auto, TWO_GPUS), Ok(both.clone()));
        assert_eq!(select_all(parse("cuda"), TWO_GPUS), Ok(both.clone()));
        assert_eq!(select_all(DeviceRequest::Gpu, TWO_GPUS), Ok(both.clone()));
        assert_eq!(select_all(parse("cuda:1"), TWO_GPUS), Ok(vec![Device::Cuda(1)]));
        assert_eq!(select_all(parse("cpu"), TWO_GPUS), Ok(vec![Device::Cpu]));
        assert_eq!(select_all(DeviceRequest::Auto, MAC), Ok(vec![Device::Mps]));
        assert_eq!(select_all(DeviceRequest::Auto, CPU), Ok(vec![Device::Cpu]));
        assert_eq!(select_all(parse("cuda"), CPU), Err(DeviceError::NoCuda(DeviceRequest::Cuda(None))));
    }

    #[test]
    fn device_ids_name_the_gpus_in_order() {
        let model = |ty: Option<&str>, ids: Option<&[usize]>, available| {
            select_for_model(DeviceRequest::for_model(DeviceRequest::Auto, ty, ids)?, ids, available)
        };
        assert_eq!(model(Some("gpu"), Some(&[1, 0]), TWO_GPUS), Ok(vec![Device::Cuda(1), Device::Cuda(0)]));
        assert_eq!(model(None, Some(&[1, 1]), TWO_GPUS), Ok(vec![Device::Cuda(1)]));
        assert_eq!(model(Some("gpu"), None, TWO_GPUS), Ok(vec![Device::Cuda(0), Device::Cuda(1)]));
        assert_eq!(model(Some("cpu"), None, TWO_GPUS), Ok(vec![Device::Cpu]));
        assert!(matches!(model(None, Some(&[0, 2]), TWO_GPUS), Err(DeviceError::NoSuchGpu { index: 2, .. })));
        assert!(matches!(model(Some("cpu"), Some(&[0]), TWO_GPUS), Err(DeviceError::ModelKeys(_))));
        let pinned = select_for_model(parse("cuda:1"), None, TWO_GPUS);
        assert_eq!(pinned, Ok(vec![Device::Cuda(1)]), "TORCH_DEVICE=cuda:N keeps a model on that GPU");
    }

    #[test]
    fn this_machine_is_detected_once() {
        let first = Availability::detect();
        assert_eq!(first, Availability::detect());
        assert_eq!(select(DeviceRequest::Cpu, first), Ok(Device::Cpu));
    }
}
