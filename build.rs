// Bake the libpython directory into the binary's rpath, so that target/*/siphon
// loads the Python it was built against from any shell, with no LD_LIBRARY_PATH.
fn main() {
    pyo3_build_config::add_libpython_rpath_link_args();
}
