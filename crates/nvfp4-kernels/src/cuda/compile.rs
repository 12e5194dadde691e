//! Run-time compilation of the embedded CUDA C++ sources with NVRTC, for the
//! GPU that is present, with an on-disk cache of the result.
//!
//! Nothing CUDA is needed at build time: `libnvrtc` is opened when the first
//! kernel is needed. Options never include fast math: the kernels must give
//! the same bits as [`crate::format`] (`--fmad=false` also forbids contracting
//! `a*b+c` into one rounding).

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::Instant;

use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Device code shared by every module, prepended to each source.
const COMMON: &str = include_str!("../../kernels/common.cuh");

/// One kernel module: a `.cu` file embedded in the binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KernelModule {
    /// `kernels/quantize.cu`: quantize, fake-quantize (STE), amax scan.
    Quantize,
    /// `kernels/dequantize.cu`: NVFP4 -> bf16 / f32.
    Dequantize,
    /// `kernels/gemv.cu`: the fused W4A16 matmul for M <= 16.
    Gemv,
    /// `kernels/decode.cu`: the small fused ops of the batch-1 decode step
    /// (embedding row, RMSNorm with residual, q/k norm + RoPE + cache append,
    /// split-K attention, SiLU*up).
    Decode,
    /// `kernels/adamw.cu`: the fused AdamW update (f32 / bf16 / 8-bit state).
    Adamw,
    /// `kernels/train.cu`: the fused forward / backward ops of a decoder
    /// block's training step (RMSNorm, SwiGLU, q/k norm + RoPE; see
    /// [`crate::train_ops`]).
    Train,
    /// `kernels/loss.cu`: fused cross-entropy forward + backward over bf16 logits.
    Loss,
    /// `kernels/timing.cu`: the spin kernel of [`crate::cuda::time_gpu`]
    /// (benchmarks only; not part of [`KernelModule::ALL`]).
    Timing,
}

impl KernelModule {
    /// Every module the compute paths need, in the order diagnose reports them.
    pub const ALL: [KernelModule; 7] = [
        KernelModule::Quantize,
        KernelModule::Dequantize,
        KernelModule::Gemv,
        KernelModule::Decode,
        KernelModule::Adamw,
        KernelModule::Train,
        KernelModule::Loss,
    ];

    /// Short name (also the cache-file prefix).
    pub fn name(self) -> &'static str {
        match self {
            KernelModule::Quantize => "quantize",
            KernelModule::Dequantize => "dequantize",
            KernelModule::Gemv => "gemv",
            KernelModule::Decode => "decode",
            KernelModule::Adamw => "adamw",
            KernelModule::Train => "train",
            KernelModule::Loss => "loss",
            KernelModule::Timing => "timing",
        }
    }

    fn body(self) -> &'static str {
        match self {
            KernelModule::Quantize => include_str!("../../kernels/quantize.cu"),
            KernelModule::Dequantize => include_str!("../../kernels/dequantize.cu"),
            KernelModule::Gemv => include_str!("../../kernels/gemv.cu"),
            KernelModule::Decode => include_str!("../../kernels/decode.cu"),
            KernelModule::Adamw => include_str!("../../kernels/adamw.cu"),
            KernelModule::Train => include_str!("../../kernels/train.cu"),
            KernelModule::Loss => include_str!("../../kernels/loss.cu"),
            KernelModule::Timing => include_str!("../../kernels/timing.cu"),
        }
    }

    /// The full source handed to NVRTC.
    pub fn source(self) -> String {
        format!("{COMMON}\n#line 1 \"{}.cu\"\n{}", self.name(), self.body())
    }
}

/// What NVRTC compiles for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `--gpu-architecture` value: `sm_90a` on Hopper, `compute_XY` elsewhere.
    pub arch: String,
    /// True when `arch` is a real GPU (a cubin is produced), false for PTX.
    pub cubin: bool,
}

impl Target {
    /// Picks the target for compute capability `(major, minor)`. Hopper and
    /// Blackwell (9.0, 10.x, 12.x) get a cubin for their architecture-specific
    /// target (`sm_90a`, `sm_100a`, `sm_120a`, `sm_121a`, ...) when this NVRTC
    /// knows the architecture, so nothing is JIT-compiled at start; any other
    /// device gets PTX for the newest virtual architecture NVRTC supports that
    /// is not newer than the device (the driver JIT-compiles it).
    pub fn for_device(major: i32, minor: i32, supported: &[i32]) -> Target {
        let cc = major * 10 + minor;
        if matches!(major, 9 | 10 | 12) && supported.contains(&cc) {
            return Target::arch_specific(cc);
        }
        let best = supported
            .iter()
            .copied()
            .filter(|&a| a <= cc)
            .max()
            .unwrap_or(cc);
        Target {
            arch: format!("compute_{best}"),
            cubin: false,
        }
    }

    /// The cubin target `sm_<cc>a` (architecture-specific features allowed).
    pub fn arch_specific(cc: i32) -> Target {
        Target {
            arch: format!("sm_{cc}a"),
            cubin: true,
        }
    }

    /// A plain cubin target `sm_<cc>` (portable within the major version).
    pub fn cubin(cc: i32) -> Target {
        Target {
            arch: format!("sm_{cc}"),
            cubin: true,
        }
    }
}

/// A compiled module image, ready for `cuModuleLoadData`.
pub struct Compiled {
    /// Cubin bytes, or NUL-free PTX text bytes.
    pub image: Vec<u8>,
    /// Whether `image` is a cubin (else PTX).
    pub cubin: bool,
    /// Milliseconds spent compiling (0 when read from the cache).
    pub compile_ms: f64,
    /// Whether the image came from the disk cache.
    pub cached: bool,
    /// NVRTC's log (warnings, ptxas resource usage).
    pub log: String,
}

/// NVRTC's version as (major, minor).
pub fn nvrtc_version() -> Result<(i32, i32)> {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: two valid out-pointers to c_int; libnvrtc presence was checked
    // by the caller (runtime::libraries_present) before any NVRTC call.
    unsafe { nvrtc_sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .map_err(|e| cuda_err("nvrtcVersion", e))?;
    Ok((major, minor))
}

/// The `sm_XY` numbers NVRTC can compile for (e.g. 75, 80, ..., 120).
pub fn supported_archs() -> Result<Vec<i32>> {
    let mut n = 0;
    // SAFETY: valid out-pointer; see nvrtc_version.
    unsafe { nvrtc_sys::nvrtcGetNumSupportedArchs(&mut n) }
        .result()
        .map_err(|e| cuda_err("nvrtcGetNumSupportedArchs", e))?;
    let mut archs = vec![0i32; n.max(0) as usize];
    // SAFETY: `archs` has room for exactly the count NVRTC just reported.
    unsafe { nvrtc_sys::nvrtcGetSupportedArchs(archs.as_mut_ptr()) }
        .result()
        .map_err(|e| cuda_err("nvrtcGetSupportedArchs", e))?;
    Ok(archs)
}

fn cuda_err(op: &str, e: impl std::fmt::Debug) -> Error {
    Error::Cuda {
        op: op.to_string(),
        message: format!("{e:?}"),
    }
}

/// NVRTC options for `target`. `-lineinfo` keeps compute-sanitizer reports
/// readable and costs nothing at run time.
fn options(target: &Target) -> Vec<String> {
    vec![
        format!("--gpu-architecture={}", target.arch),
        "--std=c++17".into(),
        "--fmad=false".into(),
        "--ftz=false".into(),
        "--prec-div=true".into(),
        "--prec-sqrt=true".into(),
        "-lineinfo".into(),
        "--ptxas-options=-v".into(),
    ]
}

/// Compiles `module` for `target`, or reads it from the disk cache.
pub fn compile(module: KernelModule, target: &Target) -> Result<Compiled> {
    let source = module.source();
    let opts = options(target);
    let (major, minor) = nvrtc_version()?;
    let key = cache_key(&source, &opts, major, minor);
    let ext = if target.cubin { "cubin" } else { "ptx" };
    let cache_file =
        cache_dir().map(|d| d.join(format!("{}-{}-{key}.{ext}", module.name(), target.arch)));
    if let Some(image) = cache_file.as_deref().and_then(read_cached) {
        return Ok(Compiled {
            image,
            cubin: target.cubin,
            compile_ms: 0.0,
            cached: true,
            log: String::new(),
        });
    }
    let start = Instant::now();
    let (image, log) = run_nvrtc(module, &source, &opts, target)?;
    let compile_ms = start.elapsed().as_secs_f64() * 1e3;
    if let Some(path) = cache_file.as_deref() {
        if let Err(e) = write_atomically(path, &image) {
            tracing::debug!(
                "nvfp4 kernel cache: could not write {}: {e}",
                path.display()
            );
        }
    }
    Ok(Compiled {
        image,
        cubin: target.cubin,
        compile_ms,
        cached: false,
        log,
    })
}

fn cache_key(source: &str, opts: &[String], major: i32, minor: i32) -> String {
    let mut h = Sha256::new();
    h.update(source.as_bytes());
    for o in opts {
        h.update([0u8]);
        h.update(o.as_bytes());
    }
    h.update(format!("\0nvrtc {major}.{minor}").as_bytes());
    h.finalize()
        .iter()
        .take(12)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `$NVFP4_KERNEL_CACHE`, else `$XDG_CACHE_HOME/qwen3-nvfp4/kernels`, else
/// `~/.cache/qwen3-nvfp4/kernels`; `NVFP4_KERNEL_CACHE=off` disables caching.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("NVFP4_KERNEL_CACHE") {
        return (dir != "off").then(|| PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("qwen3-nvfp4").join("kernels"))
}

fn read_cached(path: &Path) -> Option<Vec<u8>> {
    std::fs::read(path).ok().filter(|b| !b.is_empty())
}

/// Temp file in the same directory, fsync, rename: a concurrent reader sees
/// either nothing or the whole image.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("k"),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

/// Owns an `nvrtcProgram` so every exit path destroys it.
struct Program(nvrtc_sys::nvrtcProgram);

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program was created by nvrtc::create_program and is
        // destroyed exactly once, here.
        let _ = unsafe { nvrtc::destroy_program(self.0) };
    }
}

/// NVRTC dlopens its builtins library (`libnvrtc-builtins.so.X.Y`) by soname
/// at the first compile. Where NVRTC itself was found through the run path
/// (the torch wheel's `nvidia/cu13/lib`, see build/torch_link.rs) rather than
/// `LD_LIBRARY_PATH`, that soname is on no search path, and every compile
/// fails. Loading it first by full path from NVRTC's own folder makes the later
/// dlopen by soname find the loaded copy. Call after NVRTC is loaded.
fn preload_nvrtc_builtins() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Some(entries) = loaded_library_dir("libnvrtc.so").and_then(|d| d.read_dir().ok())
        else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            // The `.alt` twin is NVRTC's other ABI flavour, not the one it asks for.
            if !name.to_string_lossy().starts_with("libnvrtc-builtins.so") {
                continue;
            }
            if let Ok(path) = CString::new(entry.path().into_os_string().into_encoded_bytes()) {
                // SAFETY: a NUL-terminated path; the handle is deliberately kept
                // for the life of the process, as NVRTC's own would be.
                unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
            }
        }
    });
}

/// The folder of the first loaded shared object whose file name starts with
/// `prefix`, read from this process's memory map.
fn loaded_library_dir(prefix: &str) -> Option<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .map(Path::new)
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .and_then(|p| p.parent().map(Path::to_path_buf))
}

fn run_nvrtc(
    module: KernelModule,
    source: &str,
    opts: &[String],
    target: &Target,
) -> Result<(Vec<u8>, String)> {
    let src = CString::new(source).map_err(|_| Error::KernelCompile {
        module: module.name().into(),
        arch: target.arch.clone(),
        log: "source contains a NUL byte".into(),
    })?;
    let name = CString::new(format!("{}.cu", module.name())).expect("module names have no NUL");
    let prog = Program(
        nvrtc::create_program(&src, Some(&name)).map_err(|e| cuda_err("nvrtcCreateProgram", e))?,
    );
    preload_nvrtc_builtins();
    // SAFETY: `prog.0` is a live program; options are plain strings.
    let compiled = unsafe { nvrtc::compile_program(prog.0, opts) };
    let log = program_log(&prog);
    if let Err(e) = compiled {
        return Err(Error::KernelCompile {
            module: module.name().into(),
            arch: target.arch.clone(),
            log: format!("{e:?}\n{log}"),
        });
    }
    let image = if target.cubin {
        get_cubin(&prog)?
    } else {
        get_ptx(&prog)?
    };
    Ok((image, log))
}

fn program_log(prog: &Program) -> String {
    // SAFETY: live program; the log is a NUL-terminated C string.
    match unsafe { nvrtc::get_program_log(prog.0) } {
        Ok(raw) => {
            let bytes: Vec<u8> = raw
                .iter()
                .map(|&c| c as u8)
                .take_while(|&b| b != 0)
                .collect();
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Err(e) => format!("(no NVRTC log: {e:?})"),
    }
}

fn get_ptx(prog: &Program) -> Result<Vec<u8>> {
    // SAFETY: live, successfully compiled program.
    let raw = unsafe { nvrtc::get_ptx(prog.0) }.map_err(|e| cuda_err("nvrtcGetPTX", e))?;
    Ok(raw
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect())
}

fn get_cubin(prog: &Program) -> Result<Vec<u8>> {
    let mut size = 0usize;
    // SAFETY: live, successfully compiled program; valid out-pointer.
    unsafe { nvrtc_sys::nvrtcGetCUBINSize(prog.0, &mut size) }
        .result()
        .map_err(|e| cuda_err("nvrtcGetCUBINSize", e))?;
    let mut buf = vec![0u8; size];
    // SAFETY: `buf` has exactly the size NVRTC reported.
    unsafe { nvrtc_sys::nvrtcGetCUBIN(prog.0, buf.as_mut_ptr().cast()) }
        .result()
        .map_err(|e| cuda_err("nvrtcGetCUBIN", e))?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hopper_and_blackwell_get_arch_specific_cubins_and_others_ptx() {
        let sup = [75, 80, 86, 89, 90, 100, 120, 121];
        assert_eq!(Target::for_device(9, 0, &sup), Target::arch_specific(90));
        assert_eq!(Target::for_device(10, 0, &sup), Target::arch_specific(100));
        assert_eq!(Target::for_device(12, 1, &sup), Target::arch_specific(121));
        assert_eq!(Target::arch_specific(120).arch, "sm_120a");
        assert_eq!(
            Target::for_device(8, 6, &sup),
            Target {
                arch: "compute_86".into(),
                cubin: false
            }
        );
        // A Blackwell this NVRTC does not know: PTX, not a cubin it cannot build.
        assert_eq!(
            Target::for_device(10, 3, &sup),
            Target {
                arch: "compute_100".into(),
                cubin: false
            }
        );
        // A device newer than this NVRTC knows: newest older virtual arch.
        assert_eq!(
            Target::for_device(13, 0, &sup),
            Target {
                arch: "compute_121".into(),
                cubin: false
            }
        );
    }

    #[test]
    fn cache_key_changes_with_source_options_and_version() {
        let o = vec!["--a".to_string()];
        let k = cache_key("src", &o, 13, 0);
        assert_ne!(k, cache_key("src2", &o, 13, 0));
        assert_ne!(k, cache_key("src", &["--b".to_string()], 13, 0));
        assert_ne!(k, cache_key("src", &o, 13, 1));
        assert_eq!(k, cache_key("src", &o, 13, 0));
    }

    /// Compiling needs NVRTC but no GPU (the venv's libnvrtc is on the run
    /// path, see build/torch_link.rs), so this runs in CPU CI: every module
    /// must compile to a cubin for Ampere (sm_80), Hopper (sm_90a) and
    /// Blackwell (sm_100a data centre, sm_120a/sm_121a consumer and GB10,
    /// where this NVRTC knows them), with no register spills.
    #[test]
    fn every_module_compiles_for_ampere_hopper_and_blackwell() {
        // SAFETY: only tries to dlopen libnvrtc.
        assert!(
            unsafe { nvrtc_sys::is_culib_present() },
            "libnvrtc did not load: run scripts/setup.sh (the venv's nvidia/cu13/lib is on the run path)"
        );
        let supported = supported_archs().expect("NVRTC lists its architectures");
        for cc in [80, 90, 100, 120] {
            assert!(
                supported.contains(&cc),
                "NVRTC lacks sm_{cc}: {supported:?}"
            );
        }
        println!("NVRTC {:?} targets sm_{supported:?}", nvrtc_version());
        let mut targets = vec![Target::cubin(80)];
        targets.extend(
            [90, 100, 120, 121]
                .into_iter()
                .filter(|cc| supported.contains(cc))
                .map(Target::arch_specific),
        );
        // One thread per target: NVRTC compiles separate programs concurrently.
        std::thread::scope(|scope| {
            for t in &targets {
                scope.spawn(move || {
                    for m in KernelModule::ALL.into_iter().chain([KernelModule::Timing]) {
                        check_compiles_without_spills(m, t);
                    }
                });
            }
        });
    }

    fn check_compiles_without_spills(m: KernelModule, t: &Target) {
        let (image, log) =
            run_nvrtc(m, &m.source(), &options(t), t).unwrap_or_else(|e| panic!("{e}"));
        assert!(!image.is_empty(), "{} {}", m.name(), t.arch);
        // For reading the SASS (nvdisasm) without a GPU.
        if let Some(dir) = std::env::var_os("NVFP4_DUMP_DIR") {
            std::fs::write(
                Path::new(&dir).join(format!("{}.{}.cubin", m.name(), t.arch)),
                &image,
            )
            .unwrap();
        }
        println!("{} {}: {} bytes\n{log}", m.name(), t.arch, image.len());
        // A stack frame alone is allowed: the accurate sinf/cosf of the
        // decode module's RoPE keeps a small table in local memory for
        // its rarely taken large-argument reduction. Register spills
        // (local traffic on every iteration) are not.
        let spills = log
            .lines()
            .filter(|l| l.contains("spill stores"))
            .any(|l| !l.contains(" 0 bytes spill stores, 0 bytes spill loads"));
        assert!(!spills, "{} {} spills registers:\n{log}", m.name(), t.arch);
    }

    #[test]
    fn every_module_source_starts_with_the_common_codecs() {
        for m in KernelModule::ALL.into_iter().chain([KernelModule::Timing]) {
            let s = m.source();
            assert!(
                s.contains("f32_to_e4m3") && s.contains("extern \"C\""),
                "{}",
                m.name()
            );
        }
    }
}
