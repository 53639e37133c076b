//! Embeds an rpath to libtorch's directory so the binaries, tests and benches
//! run from any shell without `LD_LIBRARY_PATH`. `libtorch_cuda` is not
//! linked (the linker's `--as-needed` drops it): it is opened at run time
//! where the machine has a GPU (`src/cuda.rs`).

fn main() {
    // Without this, any file of the package (README.md, docs/) re-runs the
    // script and rebuilds the crate.
    println!("cargo:rerun-if-changed=build.rs");
    // Set by torch-sys (`links = "tch"`), which we depend on directly for this.
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
}
