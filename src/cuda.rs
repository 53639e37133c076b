//! libtorch's CUDA half, loaded only on a machine that can use it.
//!
//! PyTorch splits its backend in two: `libtorch_cpu` and `libtorch_cuda`.
//! CUDA works only if `libtorch_cuda` is in the process before the first
//! torch call that asks for it (libtorch looks its CUDA hooks up once).
//! Linking it into the binary made every process pay for it, GPU or not:
//! about 0.14 s of static initialisers and about 150 MiB resident (390 MiB
//! at the peak of start-up: cuBLAS, cuDNN, NCCL and the rest mapped and
//! relocated), on each coordinator, worker and CLI call. So it is not linked: [`load`] opens it with `dlopen` when the
//! machine has an NVIDIA device (`/dev/nvidiactl`, `/dev/nvidia0`, or
//! WSL's `/dev/dxg`). `GAUNTLET_CUDA=1` loads it regardless, `=0` never.
//!
//! The binary calls [`load`] first thing in `main`, before any thread and
//! before the spawner forks workers, so they inherit it. The torch
//! trainables ask through [`device`], which loads it too, for library users
//! whose `main` did not. A library user who makes torch calls of its own
//! before building a sweep calls [`load`] first.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// What [`load`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cuda {
    /// `libtorch_cuda` is loaded, from this file.
    Loaded(PathBuf),
    /// Not loaded: no NVIDIA device, or `GAUNTLET_CUDA=0`.
    NotWanted,
    /// Wanted, but this libtorch has no `libtorch_cuda` beside `libtorch_cpu` (a CPU build).
    Absent,
    /// Wanted and present, but `dlopen` refused it: the reason.
    Failed(String),
}

static STATE: OnceLock<Cuda> = OnceLock::new();

/// Loads `libtorch_cuda` once, if this machine can use it; the same answer after.
pub fn load() -> &'static Cuda {
    STATE.get_or_init(|| {
        let wanted = match std::env::var("GAUNTLET_CUDA").as_deref() {
            Ok("0") => false,
            Ok("1") => true,
            _ => gpu_present(),
        };
        if !wanted {
            return Cuda::NotWanted;
        }
        match library() {
            Some(file) => open(&file),
            None => Cuda::Absent,
        }
    })
}

/// The device the torch trainables train on: CUDA when libtorch sees a GPU, else CPU.
pub fn device() -> tch::Device {
    if let Cuda::Failed(why) = load() {
        tracing::warn!("libtorch_cuda did not load; training on the CPU: {why}");
    }
    tch::Device::cuda_if_available()
}

fn gpu_present() -> bool {
    ["/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg"].iter().any(|p| Path::new(p).exists())
}

/// `libtorch_cuda.so` beside the `libtorch_cpu.so` this process mapped.
fn library() -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let cpu = maps.lines().filter_map(|l| l.split_whitespace().nth(5)).find(|p| p.ends_with("/libtorch_cpu.so"))?;
    let cuda = Path::new(cpu).with_file_name("libtorch_cuda.so");
    cuda.exists().then_some(cuda)
}

fn open(file: &Path) -> Cuda {
    use std::os::unix::ffi::OsStrExt;
    let Ok(name) = std::ffi::CString::new(file.as_os_str().as_bytes()) else {
        return Cuda::Failed(format!("{} has a NUL in its path", file.display()));
    };
    // SAFETY: a valid C string; the handle is kept for the life of the
    // process (never dlclose'd), as the kernels it registers must be.
    let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        // SAFETY: dlerror returns a C string owned by libc, or null.
        let why = unsafe {
            let e = libc::dlerror();
            if e.is_null() {
                "unknown error".to_owned()
            } else {
                std::ffi::CStr::from_ptr(e).to_string_lossy().into_owned()
            }
        };
        return Cuda::Failed(format!("{}: {why}", file.display()));
    }
    Cuda::Loaded(file.to_owned())
}
