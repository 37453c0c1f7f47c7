//! The type stubs scripts are checked with (`python/siphon/__init__.pyi`)
//! against the module the daemon embeds: every public name, every member of
//! each class and namespace, and each method's parameters. A name added to
//! the module and not to the stubs (or the other way) fails here.

#[cfg(test)]
mod tests {
    use pyo3::prelude::*;
    use std::ffi::CString;

    /// Runs in the embedded interpreter with the real `siphon` module; sets
    /// `problems` to the list of differences.
    const COMPARE: &str = r#"
import ast, inspect, sys, types

siphon = sys.modules["siphon"]
tree = ast.parse(STUB_TEXT)
problems = []

def public(names):
    return {n for n in names if not n.startswith("_")}

def stub_members(cls):
    members = {}
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_") or (
            isinstance(node, ast.FunctionDef) and node.name == "__bool__"
        ):
            is_property = any(isinstance(d, ast.Name) and d.id == "property" for d in node.decorator_list)
            args = [a.arg for a in node.args.args[1:]]
            defaults = len(node.args.defaults)
            # An overloaded method: the first signature names the parameters.
            members.setdefault(node.name, (is_property, args, defaults))
    return members

def runtime_params(attr):
    try:
        signature = inspect.signature(attr)
    except (TypeError, ValueError):
        return None
    params = [p for p in signature.parameters.values() if p.name != "self"]
    return [p.name for p in params], sum(1 for p in params if p.default is not inspect.Parameter.empty)

def compare(where, cls_node, runtime_type):
    stub = stub_members(cls_node)
    runtime = public(dir(runtime_type))
    for missing in sorted(public(stub) - runtime):
        problems.append(f"{where}.{missing} is in the stubs but not in the module")
    for extra in sorted(runtime - public(stub)):
        problems.append(f"{where}.{extra} is in the module but not in the stubs")
    for name, (is_property, args, defaults) in stub.items():
        if not hasattr(runtime_type, name):
            continue
        static = inspect.getattr_static(runtime_type, name)
        runtime_is_property = isinstance(
            static, (property, types.GetSetDescriptorType, types.MemberDescriptorType)
        )
        if is_property != runtime_is_property:
            kind = "a property" if is_property else "a method"
            problems.append(f"{where}.{name} is {kind} in the stubs, not in the module")
            continue
        if is_property or name.startswith("__"):
            continue
        params = runtime_params(getattr(runtime_type, name))
        if params is None:
            problems.append(f"{where}.{name}: the module gives no signature to compare")
        elif params != (args, defaults):
            problems.append(
                f"{where}.{name}: stubs take {args} ({defaults} optional), the module {params[0]} ({params[1]} optional)"
            )

classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
variables = {
    n.target.id: n.annotation.id
    for n in tree.body
    if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) and isinstance(n.annotation, ast.Name)
}
stub_names = public(classes) | public(variables)
module_names = public(dir(siphon))
for missing in sorted(stub_names - module_names):
    problems.append(f"siphon.{missing} is in the stubs but not in the module")
for extra in sorted(module_names - stub_names):
    problems.append(f"siphon.{extra} is in the module but not in the stubs")
for name in sorted(public(classes) & module_names):
    compare(name, classes[name], getattr(siphon, name))
for name, class_name in sorted(variables.items()):
    if hasattr(siphon, name) and class_name in classes:
        compare(name, classes[class_name], type(getattr(siphon, name)))
"#;

    #[test]
    fn the_stubs_name_what_the_embedded_module_exposes() {
        let stub =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("python/siphon/__init__.pyi");
        let text = std::fs::read_to_string(&stub).expect("the stubs");
        let services = crate::script::ScriptServices::new(crate::gateway::Unmanaged::new());
        Python::initialize();
        let problems: Vec<String> = Python::attach(|py| {
            super::super::api::register_module(py, &services).expect("the siphon module");
            let globals = pyo3::types::PyDict::new(py);
            globals.set_item("STUB_TEXT", text).expect("globals");
            let code = CString::new(COMPARE).expect("no NUL");
            py.run(&code, Some(&globals), None)
                .expect("the comparison runs");
            globals
                .get_item("problems")
                .expect("problems")
                .expect("problems set")
                .extract()
                .expect("a list of str")
        });
        assert!(
            problems.is_empty(),
            "stubs and module differ:\n{}",
            problems.join("\n")
        );
    }
}
