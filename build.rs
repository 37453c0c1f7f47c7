// Bake the libpython directory into the binary's rpath when it is not one
// the dynamic linker searches anyway (a pyenv or venv Python), so that
// target/*/siphon loads the Python it was built against from any shell.
// Built against the system's Python (the package), there is no RUNPATH.
fn main() {
    let config = pyo3_build_config::get();
    if let Some(dir) = config.lib_dir() {
        let system = ["/usr/lib", "/lib", "/usr/lib64", "/lib64"];
        let in_system_dir = system
            .iter()
            .any(|prefix| dir == *prefix || dir.starts_with(&format!("{prefix}/")));
        if !in_system_dir {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        }
    }
}
