//! `siphon`: the daemon's command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

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
    let gateways = Arc::new(siphon::actors::gateway::GatewayService::new(
        siphon::metrics::get(),
    ));
    let services = match ScriptServices::for_config(gateways.clone(), &config) {
        Ok(services) => services,
        Err(e) => return fail(&format!("{}: {e}", path.display())),
    };
    let script = match ScriptEngine::load(&config.script.path, &services) {
        Ok(script) => script,
        Err(e) => return fail(&e),
    };
    let groups: Vec<String> = config
        .gateway
        .groups
        .iter()
        .map(|g| g.name.clone())
        .collect();
    let unknown_groups = siphon::script::lint::unknown_groups(&config.script.path, &groups);
    if cli.check {
        match unknown_groups {
            Ok(problems) if problems.is_empty() => {}
            Ok(problems) => return fail(&problems.join("\n")),
            Err(e) => return fail(&e),
        }
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
    // Run anyway (a group may come over the admin API), but say so.
    for problem in unknown_groups.into_iter().flatten() {
        tracing::warn!("{problem}");
    }
    // A bare `siphon`: the example LB with two demo backends to call through.
    let _demo = match &_embedded {
        Some(example) => match example.start_backends() {
            Ok(backends) => Some(backends),
            Err(e) => return fail(&e),
        },
        None => None,
    };
    let boot = server::Boot {
        config_path: path,
        log_level,
        gateways,
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
        CtlVerb::Down { group, uri, force } => Ok(mark("down", group, uri, force)),
        CtlVerb::Up { group, uri } => Ok(mark("up", group, uri, false)),
        CtlVerb::Drain { group, uri } => Ok(mark("drain", group, uri, false)),
        CtlVerb::Undrain { group, uri } => Ok(mark("undrain", group, uri, false)),
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

/// A mark of a destination: `down`, `up`, `drain` or `undrain`.
fn mark(action: &'static str, group: String, uri: String, force: bool) -> siphon::ctl::Verb {
    siphon::ctl::Verb::Mark {
        action,
        group,
        uri,
        force,
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
    say(&format!("siphon: {message}"));
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
    Ok((example.config.clone(), Some(example)))
}

/// The example config and scripts, compiled into the binary so that a bare
/// `siphon` runs something useful: the load balancer of config/lb.yaml, and
/// two demo backends (config/demo-backend.yaml: scripts/proxy.py's
/// registrar and proxy) on 127.0.0.1:5071 and :5072 for it to balance.
struct EmbeddedExample {
    dir: PathBuf,
    config: PathBuf,
    backend_config: PathBuf,
}

const EXAMPLE_CONFIG: &str = include_str!("../config/lb.yaml");
const EXAMPLE_SCRIPT: &str = include_str!("../scripts/lb.py");
const DEMO_BACKEND_CONFIG: &str = include_str!("../config/demo-backend.yaml");
const DEMO_BACKEND_SCRIPT: &str = include_str!("../scripts/proxy.py");

/// The demo backends: the LB's two destinations, by name and port.
const DEMO_BACKENDS: [(&str, u16); 2] = [
    ("backend1.example.com", 5071),
    ("backend2.example.com", 5072),
];

/// The example LB for the demo: its phones are on this host, so in-dialog
/// requests may go back to loopback.
fn demo_lb_config() -> String {
    let secret = "security:\n  route_secret: \"${SIPHON_ROUTE_SECRET:-}\"\n";
    EXAMPLE_CONFIG.replacen(
        secret,
        &format!("{secret}  # The demo's phones are on this host.\n  relay_to: {{allow: [\"127.0.0.0/8\"]}}\n"),
        1,
    )
}

impl EmbeddedExample {
    fn write() -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("siphon-example-{}", std::process::id()));
        let scripts = dir.join("scripts");
        let configs = dir.join("config");
        let written = std::fs::create_dir_all(&scripts)
            .and_then(|_| std::fs::create_dir_all(&configs))
            .and_then(|_| std::fs::write(configs.join("lb.yaml"), demo_lb_config()))
            .and_then(|_| std::fs::write(scripts.join("lb.py"), EXAMPLE_SCRIPT))
            .and_then(|_| std::fs::write(configs.join("demo-backend.yaml"), DEMO_BACKEND_CONFIG))
            .and_then(|_| std::fs::write(scripts.join("proxy.py"), DEMO_BACKEND_SCRIPT));
        written.map_err(|e| {
            format!(
                "cannot write the embedded example to {}: {e}",
                dir.display()
            )
        })?;
        Ok(EmbeddedExample {
            config: configs.join("lb.yaml"),
            backend_config: configs.join("demo-backend.yaml"),
            dir,
        })
    }

    /// Starts the demo backends (this binary again, one process each: a
    /// process embeds one Python, and each backend runs its own script),
    /// and says once what to do with them.
    fn start_backends(&self) -> Result<DemoBackends, String> {
        use std::os::unix::process::CommandExt;
        let binary = std::env::current_exe()
            .map_err(|e| format!("cannot find this binary to start the demo backends: {e}"))?;
        let mut children = Vec::new();
        for (name, port) in DEMO_BACKENDS {
            let mut command = std::process::Command::new(&binary);
            command
                .arg("--config")
                .arg(&self.backend_config)
                .env("SIPHON_DEMO_NAME", name)
                .env("SIPHON_DEMO_PORT", port.to_string())
                // Under systemd, READY=1 is ours to say, not theirs.
                .env_remove("NOTIFY_SOCKET")
                .stdin(std::process::Stdio::null());
            // SAFETY: prctl only sets a flag of the child being made: it
            // gets SIGTERM when this process ends, however it ends.
            let parent = std::process::id();
            unsafe {
                command.pre_exec(move || {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    // The LB may have gone before the flag was set.
                    if libc::getppid() as u32 != parent {
                        libc::_exit(0);
                    }
                    Ok(())
                });
            }
            let child = command
                .spawn()
                .map_err(|e| format!("cannot start the demo backend {name}: {e}"))?;
            children.push(child);
        }
        say(&format!(
            "siphon: no --config and no ./siphon.yaml: running the example load balancer\n\
             \x20 on 127.0.0.1:5060 (UDP and TCP), in front of two demo backends (registrar\n\
             \x20 and proxy, scripts/proxy.py) on 127.0.0.1:5071 and 127.0.0.1:5072.\n\
             \x20 Try it: point two SIP phones at 127.0.0.1 (domain 127.0.0.1, any user name,\n\
             \x20 no password) and call one from the other, e.g. sip:bob@127.0.0.1.\n\
             \x20 Your own config: start from config/lb.yaml (or /etc/siphon/siphon.yaml from\n\
             \x20 the package), check it with `siphon --check --config FILE`, run it with\n\
             \x20 --config FILE (or as ./siphon.yaml); either turns this demo off.\n\
             \x20 The example's files: {}",
            self.dir.display()
        ));
        Ok(DemoBackends { children })
    }
}

/// The demo backends' processes, stopped with the LB.
struct DemoBackends {
    children: Vec<std::process::Child>,
}

impl Drop for DemoBackends {
    fn drop(&mut self) {
        for child in &self.children {
            // SAFETY: a plain kill(2) of our own child's pid.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
    }
}

/// A line for the operator on stderr; a closed stderr loses it, nothing else.
fn say(text: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{text}");
}

impl Drop for EmbeddedExample {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
