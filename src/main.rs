//! `siphon`: the daemon's command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use siphon::script::{ScriptEngine, ScriptServices};
use siphon::{config, logging, server};

/// A SIP proxy and load balancer, routed by a Python script.
#[derive(Parser)]
#[command(name = "siphon", version)]
struct Cli {
    /// The YAML config file. Without it, ./siphon.yaml is used if present,
    /// else the embedded example (the load balancer of config/lb.yaml).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Validate the config and compile the script, then exit (0 = valid).
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (path, _embedded) = match config_path(cli.config) {
        Ok(found) => found,
        Err(e) => return fail(&e),
    };
    let config = match config::load(&path) {
        Ok(config) => config,
        Err(e) => return fail(&e.to_string()),
    };
    if let Err(e) = logging::init(&config.log.level, config.log.format) {
        return fail(&format!("{}: log: {e}", path.display()));
    }
    let services = match ScriptServices::for_config(siphon::metrics::get(), &config) {
        Ok(services) => services,
        Err(e) => return fail(&format!("{}: {e}", path.display())),
    };
    let script = match ScriptEngine::load(&config.script.path, &services) {
        Ok(script) => script,
        Err(e) => return fail(&e),
    };
    if cli.check {
        println!(
            "{}: OK (script {})",
            path.display(),
            config.script.path.display()
        );
        return ExitCode::SUCCESS;
    }
    match server::run(config, script, services) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("siphon: {message}");
    ExitCode::from(1)
}

/// The config to run: the one named, ./siphon.yaml, or the embedded example
/// written to a temporary directory (kept alive by the returned guard).
fn config_path(named: Option<PathBuf>) -> Result<(PathBuf, Option<EmbeddedExample>), String> {
    if let Some(path) = named {
        return Ok((path, None));
    }
    let local = PathBuf::from("siphon.yaml");
    if local.exists() {
        return Ok((local, None));
    }
    let example = EmbeddedExample::write()?;
    eprintln!(
        "siphon: no --config and no ./siphon.yaml; running the embedded example {}",
        example.config.display()
    );
    Ok((example.config.clone(), Some(example)))
}

/// The example config and script, compiled into the binary so that a bare
/// `siphon` runs something useful.
struct EmbeddedExample {
    dir: PathBuf,
    config: PathBuf,
}

const EXAMPLE_CONFIG: &str = include_str!("../config/lb.yaml");
const EXAMPLE_SCRIPT: &str = include_str!("../scripts/lb.py");

impl EmbeddedExample {
    fn write() -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("siphon-example-{}", std::process::id()));
        let scripts = dir.join("scripts");
        let configs = dir.join("config");
        let written = std::fs::create_dir_all(&scripts)
            .and_then(|_| std::fs::create_dir_all(&configs))
            .and_then(|_| std::fs::write(configs.join("lb.yaml"), EXAMPLE_CONFIG))
            .and_then(|_| std::fs::write(scripts.join("lb.py"), EXAMPLE_SCRIPT));
        written.map_err(|e| {
            format!(
                "cannot write the embedded example to {}: {e}",
                dir.display()
            )
        })?;
        Ok(EmbeddedExample {
            config: configs.join("lb.yaml"),
            dir,
        })
    }
}

impl Drop for EmbeddedExample {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
