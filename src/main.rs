//! `siphon`: the daemon's command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use siphon::script::{ScriptEngine, ScriptServices};
use siphon::{config, logging, server};

/// A SIP proxy and load balancer, routed by a Python script.
#[derive(Parser)]
#[command(
    name = "siphon",
    version,
    after_long_help = "\
Signals: SIGHUP reloads the config, the script (and the modules it imports \
from its own directory), the credentials and TLS files; SIGTERM or SIGINT \
drain (new calls get 503) and stop, a second one stops at once.

Config: ${VAR} and ${VAR:-default} in the YAML are replaced from the \
environment before parsing. RUST_LOG (e.g. RUST_LOG=debug) overrides \
log.level.

Operating it: with admin.listen set, `siphon ctl` drives the admin API \
(gateways, drain, reload, registrations, bans); `siphon man` prints the \
man page, `siphon completions bash` a shell completion script."
)]
struct Cli {
    /// The YAML config file. Without it, ./siphon.yaml is used if present,
    /// else the embedded example (the load balancer of config/lb.yaml).
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Validate the config and compile the script, then exit (0 = valid).
    #[arg(long)]
    check: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Print what the script decides for one SIP message, as one JSON
    /// object, without sockets (a dry run against the config).
    Route(RouteArgs),
    /// Drive a running siphon over its admin API (as kamcmd does Kamailio).
    /// The admin address and token come from --config (admin.listen,
    /// admin.token) or from --url and --token.
    Ctl(CtlArgs),
    /// Print the man page (roff), written from this command line's own
    /// definition: `siphon man > siphon.1`.
    Man,
    /// Print a completion script for SHELL (bash, zsh, fish, elvish,
    /// powershell): `siphon completions bash > /etc/bash_completion.d/siphon`.
    Completions { shell: clap_complete::Shell },
}

#[derive(clap::Args)]
struct CtlArgs {
    /// The admin API, as http://host:port (instead of --config's admin.listen).
    #[arg(long)]
    url: Option<String>,
    /// The admin token (instead of --config's admin.token).
    #[arg(long)]
    token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    verb: CtlVerb,
}

#[derive(Subcommand)]
enum CtlVerb {
    /// Every destination: state, reason, latency, active calls, weight, priority.
    Gateways { group: Option<String> },
    /// Hold a destination down (probes do not lift it).
    Down {
        group: String,
        uri: String,
        /// Even if it is the group's last destination up.
        #[arg(long)]
        force: bool,
    },
    /// Lift a hold.
    Up { group: String, uri: String },
    /// No new requests for a destination; its calls go on.
    Drain { group: String, uri: String },
    /// End a drain.
    Undrain { group: String, uri: String },
    /// Add a destination: FIELDS as name=value (address=, weight=,
    /// priority=, max_calls=, max_cps=, transport=, attrs.K=).
    Add {
        group: String,
        uri: String,
        fields: Vec<String>,
    },
    /// Remove a destination; its calls in progress go on.
    Remove { group: String, uri: String },
    /// Change a destination: weight=, priority=, max_calls=, max_cps=
    /// (none lifts a limit), attrs.K=.
    Set {
        group: String,
        uri: String,
        fields: Vec<String>,
    },
    /// The ranking of KEY in GROUP, first choice first.
    Select { group: String, key: String },
    /// Read the config file and the script again (as SIGHUP).
    Reload,
    /// The bindings of an AoR.
    Registrations { aor: Option<String> },
    /// The sources banned at the edge.
    Bans,
    /// Lift a ban.
    Unban { ip: String },
    /// The Prometheus metrics.
    Metrics,
}

#[derive(clap::Args)]
struct RouteArgs {
    /// A file holding the SIP message (`-`: standard input).
    message: Option<PathBuf>,
    /// Hold a destination down first, as GROUP=URI (repeatable).
    #[arg(long = "mark-down", value_name = "GROUP=URI")]
    mark_down: Vec<String>,
    /// Where the message comes from, as ip:port.
    #[arg(long, default_value = siphon::dry_run::DEFAULT_SOURCE)]
    source: String,
    /// The transport it arrives over: udp, tcp, tls, ws or wss.
    #[arg(long, default_value = "udp")]
    transport: String,
    /// Answer JSON requests, one per line, on standard input (what
    /// `siphon.testing.Harness` uses) instead of routing one message.
    #[arg(long)]
    serve: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Ctl(args)) = cli.command {
        return ctl(cli.config, args);
    }
    if let Some(Command::Man) = cli.command {
        use clap::CommandFactory;
        print!("{}", siphon::manpage::render(&Cli::command()));
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Completions { shell }) = cli.command {
        use clap::CommandFactory;
        clap_complete::generate(shell, &mut Cli::command(), "siphon", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    let (path, _embedded) = match config_path(cli.config) {
        Ok(found) => found,
        Err(e) => return fail(&e),
    };
    let config = match config::load(&path) {
        Ok(config) => config,
        Err(e) => return fail(&e.to_string()),
    };
    let log_level = match logging::init(&config.log.level, config.log.format) {
        Ok(handle) => handle,
        Err(e) => return fail(&format!("{}: log: {e}", path.display())),
    };
    if let Some(Command::Route(args)) = cli.command {
        return match route(&config, args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        };
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
        // A daemon running this file: what a reload would change there.
        if let Some(lines) = siphon::ctl::reload_preview(&config, &path) {
            match lines.is_empty() {
                true => println!("a reload would change no gateway group of the running daemon"),
                false => {
                    println!("a reload would change the running daemon's gateway groups:");
                    for line in lines {
                        println!("  {line}");
                    }
                }
            }
        }
        return ExitCode::SUCCESS;
    }
    let boot = server::Boot {
        config_path: path,
        log_level,
    };
    match server::run(config, script, services, boot) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// `siphon ctl`: one verb against the admin API.
fn ctl(config: Option<PathBuf>, args: CtlArgs) -> ExitCode {
    use siphon::ctl::{parse_fields, Target, Verb};
    let target = match (&args.url, config) {
        (Some(url), _) => Target::from_url(url, args.token.clone()),
        (None, Some(path)) => Target::from_config(&path, args.token.clone()),
        (None, None) if std::path::Path::new("siphon.yaml").exists() => {
            Target::from_config(std::path::Path::new("siphon.yaml"), args.token.clone())
        }
        (None, None) => Err(
            "name the daemon: --config FILE (its admin.listen and admin.token) or --url http://host:port"
                .to_string(),
        ),
    };
    let target = match target {
        Ok(target) => target,
        Err(e) => return fail(&format!("ctl: {e}")),
    };
    let fields = |words: &[String]| parse_fields(words);
    let verb = match args.verb {
        CtlVerb::Gateways { group } => Ok(Verb::Gateways(group)),
        CtlVerb::Down { group, uri, force } => Ok(Verb::Mark {
            action: "down",
            group,
            uri,
            force,
        }),
        CtlVerb::Up { group, uri } => Ok(Verb::Mark {
            action: "up",
            group,
            uri,
            force: false,
        }),
        CtlVerb::Drain { group, uri } => Ok(Verb::Mark {
            action: "drain",
            group,
            uri,
            force: false,
        }),
        CtlVerb::Undrain { group, uri } => Ok(Verb::Mark {
            action: "undrain",
            group,
            uri,
            force: false,
        }),
        CtlVerb::Add {
            group,
            uri,
            fields: words,
        } => fields(&words).map(|fields| Verb::Add { group, uri, fields }),
        CtlVerb::Remove { group, uri } => Ok(Verb::Remove { group, uri }),
        CtlVerb::Set {
            group,
            uri,
            fields: words,
        } => fields(&words).map(|fields| Verb::Set { group, uri, fields }),
        CtlVerb::Select { group, key } => Ok(Verb::Select { group, key }),
        CtlVerb::Reload => Ok(Verb::Reload),
        CtlVerb::Registrations { aor } => Ok(Verb::Registrations(aor)),
        CtlVerb::Bans => Ok(Verb::Bans),
        CtlVerb::Unban { ip } => Ok(Verb::Unban(ip)),
        CtlVerb::Metrics => Ok(Verb::Metrics),
    };
    match verb {
        Ok(verb) => ExitCode::from(siphon::ctl::run(&target, &verb, args.json)),
        Err(e) => {
            eprintln!("siphon ctl: {e}");
            ExitCode::from(2)
        }
    }
}

/// `siphon route`: one message's decision, or `--serve`.
fn route(config: &config::Config, args: RouteArgs) -> Result<(), String> {
    use siphon::dry_run::{parse_source, parse_transport, DryRun};
    let mut dry_run = DryRun::new(config)?;
    for mark in &args.mark_down {
        let (group, uri) = mark
            .split_once('=')
            .ok_or_else(|| format!("--mark-down {mark}: write it GROUP=URI"))?;
        dry_run
            .mark(group, uri, true)
            .map_err(|e| format!("--mark-down {mark}: {e}"))?;
    }
    if args.serve {
        let stdin = std::io::stdin();
        return dry_run
            .serve(stdin.lock(), std::io::stdout().lock())
            .map_err(|e| format!("route --serve: {e}"));
    }
    let source = parse_source(&args.source)?;
    let protocol = parse_transport(&args.transport)?;
    let text = match args.message.as_deref() {
        None => return Err("route: name a file holding the SIP message (or - for stdin)".into()),
        Some(path) if path.as_os_str() == "-" => {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .map_err(|e| format!("route: cannot read stdin: {e}"))?;
            text
        }
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("route: cannot read {}: {e}", path.display()))?,
    };
    let decision = dry_run.route(&text, source, protocol)?;
    println!("{decision}");
    Ok(())
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
