//! What `--check` finds in a script beyond "it loads": gateway groups it
//! names (`gateway.select("backnds")`) that neither the config nor the
//! script itself (`gateway.add_group("name", ...)`) makes. Read from the
//! script's syntax tree (Python's own `ast`), so nothing of it runs.

use std::path::Path;

use pyo3::prelude::*;

/// The gateway functions whose first argument (or `group=`) is a group.
const FINDER: &std::ffi::CStr = c"
import ast

NAMING = {'select', 'mark_down', 'mark_up', 'is_from', 'drain', 'undrain'}

def gateway_calls(source, filename):
    for node in ast.walk(ast.parse(source, filename)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and isinstance(node.func.value, ast.Name) and node.func.value.id == 'gateway'):
            group = node.args[0] if node.args else next(
                (k.value for k in node.keywords if k.arg in ('group', 'name')), None)
            literal = isinstance(group, ast.Constant) and isinstance(group.value, str)
            yield node, (group.value if literal else None)

def groups_named(source, filename, helpers):
    \"\"\"The literal groups the script names, and the groups it and the
    modules beside it make; None for the latter when one is made under a
    name computed at run time (then nothing can be told).\"\"\"
    made = set()
    for text, name in [(source, filename)] + helpers:
        try:
            calls = list(gateway_calls(text, name))
        except SyntaxError:
            continue
        for node, group in calls:
            if node.func.attr == 'add_group':
                if group is None:
                    return [], None
                made.add(group)
    named = [(node.lineno, node.func.attr, group)
             for node, group in gateway_calls(source, filename)
             if group is not None and node.func.attr in NAMING]
    return named, sorted(made)
";

/// A line, a gateway function and the group it names there.
type GroupUse = (u32, String, String);

/// One line per group the script at `path` names that `configured` does
/// not hold and neither the script nor a module beside it adds: `lb.py:12:
/// gateway.select("backnds"): no such gateway group (configured: backends)`.
/// Nothing when a group is made under a name computed at run time.
pub fn unknown_groups(path: &Path, configured: &[String]) -> Result<Vec<String>, String> {
    let source = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read script {}: {e}", path.display()))?;
    let file = path.display().to_string();
    let helpers = helper_sources(path);
    Python::attach(|py| {
        let finder = PyModule::from_code(py, FINDER, c"<siphon --check>", c"siphon_check")?;
        let (named, made): (Vec<GroupUse>, Option<Vec<String>>) = finder
            .getattr("groups_named")?
            .call1((source.as_str(), file.as_str(), helpers))?
            .extract()?;
        let Some(made) = made else {
            return Ok(Vec::new());
        };
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

/// The other Python modules in the script's directory, as (text, name).
fn helper_sources(path: &Path) -> Vec<(String, String)> {
    let Some(directory) = path.parent() else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir(directory) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "py") && p != path)
        .filter_map(|p| Some((std::fs::read_to_string(&p).ok()?, p.display().to_string())))
        .collect()
}
