//! What `--check` finds in a script beyond "it loads": gateway groups it
//! names (`gateway.select("backnds")`) that neither the config nor the
//! script itself (`gateway.add_group("name", ...)`) makes. Read from the
//! script's syntax tree (Python's own `ast`), so nothing of it runs.

use std::path::Path;

use pyo3::prelude::*;

/// The gateway functions whose first argument (or `group=`) is a group.
const FINDER: &std::ffi::CStr = c"
import ast

NAMING = {'select', 'mark_down', 'mark_up', 'is_from', 'drain', 'undrain', 'list', 'remove_group'}

def groups_named(source, filename):
    named, made = [], set()
    for node in ast.walk(ast.parse(source, filename)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == 'gateway'):
            continue
        group = node.args[0] if node.args else next(
            (k.value for k in node.keywords if k.arg in ('group', 'name')), None)
        if not (isinstance(group, ast.Constant) and isinstance(group.value, str)):
            continue
        if node.func.attr == 'add_group':
            made.add(group.value)
        elif node.func.attr in NAMING:
            named.append((node.lineno, node.func.attr, group.value))
    return named, sorted(made)
";

/// One line per group the script at `path` names that `configured` does
/// not hold and the script does not add: `lb.py:12:
/// gateway.select("backnds"): no such gateway group (configured: backends)`.
pub fn unknown_groups(path: &Path, configured: &[String]) -> Result<Vec<String>, String> {
    let source = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read script {}: {e}", path.display()))?;
    let file = path.display().to_string();
    Python::attach(|py| {
        let finder = PyModule::from_code(py, FINDER, c"<siphon --check>", c"siphon_check")?;
        let (named, made): (Vec<(u32, String, String)>, Vec<String>) = finder
            .getattr("groups_named")?
            .call1((source.as_str(), file.as_str()))?
            .extract()?;
        let known = |group: &str| configured.iter().chain(&made).any(|g| g == group);
        let listed = if configured.is_empty() {
            "none configured".to_string()
        } else {
            format!("configured: {}", configured.join(", "))
        };
        Ok::<_, PyErr>(
            named
                .into_iter()
                .filter(|(_, _, group)| !known(group))
                .map(|(line, function, group)| {
                    format!("{file}:{line}: gateway.{function}({group:?}): no such gateway group ({listed})")
                })
                .collect(),
        )
    })
    .map_err(|e| format!("script {}: {e}", path.display()))
}
