//! Embeds an rpath to libtorch's directory so the binaries, tests and benches
//! run from any shell without `LD_LIBRARY_PATH`, and keeps `libtorch_cuda`
//! linked (pip-installed torch needs `--no-as-needed`, or CUDA is invisible).

fn main() {
    // Set by torch-sys (`links = "tch"`), which we depend on directly for this.
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch_cuda");
        println!("cargo:rustc-link-arg=-Wl,--as-needed");
    }
}
