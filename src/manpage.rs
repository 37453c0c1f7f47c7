//! `man siphon`: a man page (roff) written from the command line's own
//! definition, so the page and `--help` never disagree. The package
//! installs what `siphon man` prints as `siphon.1`.

use clap::Command;

/// The man page of `command` and its subcommands, in roff.
pub fn render(command: &Command) -> String {
    let name = command.get_name().to_string();
    let mut out = String::new();
    out.push_str(&format!(
        ".TH {} 1 \"\" \"{} {}\" \"User Commands\"\n",
        name.to_uppercase(),
        name,
        command.get_version().unwrap_or("")
    ));
    out.push_str(".SH NAME\n");
    out.push_str(&format!("{} \\- {}\n", name, escape(&about(command))));
    out.push_str(".SH SYNOPSIS\n");
    out.push_str(&format!(
        "\\fB{name}\\fR [\\fIOPTIONS\\fR] [\\fICOMMAND\\fR]\n"
    ));
    if let Some(long) = command.get_long_about() {
        out.push_str(".SH DESCRIPTION\n");
        out.push_str(&format!("{}\n", escape(&long.to_string())));
    }
    options(command, &mut out, ".SH OPTIONS\n");
    let commands: Vec<&Command> = command
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .collect();
    if !commands.is_empty() {
        out.push_str(".SH COMMANDS\n");
        for sub in commands {
            subcommand(&name, sub, &mut out);
        }
    }
    out.push_str(".SH EXIT STATUS\n0 on success; 1 on an error (a bad config names its key); 2 on a usage error.\n");
    out.push_str(".SH SEE ALSO\nThe README and docs/scripting.md of siphon.\n");
    out
}

fn about(command: &Command) -> String {
    command
        .get_about()
        .map(|a| a.to_string())
        .unwrap_or_default()
}

/// One subcommand: `.SS "siphon ctl"`, its text, its options, and its own
/// subcommands as a list.
fn subcommand(parent: &str, command: &Command, out: &mut String) {
    let path = format!("{parent} {}", command.get_name());
    out.push_str(&format!(".SS \"{path}\"\n"));
    let text = command
        .get_long_about()
        .map(|a| a.to_string())
        .unwrap_or_else(|| about(command));
    out.push_str(&format!("{}\n", escape(&text)));
    options(command, out, "");
    for verb in command.get_subcommands().filter(|c| !c.is_hide_set()) {
        let words: Vec<String> = verb
            .get_positionals()
            .map(|arg| {
                let name = arg.get_id().as_str().to_uppercase();
                match arg.is_required_set() {
                    true => format!("\\fI{name}\\fR"),
                    false => format!("[\\fI{name}\\fR]"),
                }
            })
            .collect();
        out.push_str(".TP\n");
        out.push_str(&format!(
            "\\fB{path} {}\\fR {}\n",
            verb.get_name(),
            words.join(" ")
        ));
        out.push_str(&format!("{}\n", escape(&about(verb))));
    }
}

/// The named options of `command` as a `.TP` list.
fn options(command: &Command, out: &mut String, heading: &str) {
    let named: Vec<_> = command
        .get_arguments()
        .filter(|arg| !arg.is_positional() && !arg.is_hide_set())
        .collect();
    if named.is_empty() {
        return;
    }
    out.push_str(heading);
    for arg in named {
        let mut flags = Vec::new();
        if let Some(short) = arg.get_short() {
            flags.push(format!("\\fB\\-{short}\\fR"));
        }
        if let Some(long) = arg.get_long() {
            flags.push(format!("\\fB\\-\\-{}\\fR", escape(long)));
        }
        let value = match arg.get_action().takes_values() {
            true => format!(
                " \\fI{}\\fR",
                arg.get_value_names()
                    .and_then(|names| names.first())
                    .map_or_else(|| arg.get_id().as_str().to_uppercase(), |n| n.to_string())
            ),
            false => String::new(),
        };
        out.push_str(".TP\n");
        out.push_str(&format!("{}{value}\n", flags.join(", ")));
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string());
        out.push_str(&format!("{}\n", escape(&help.unwrap_or_default())));
    }
}

/// Roff's special characters escaped; a leading dot or quote guarded.
fn escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('-', "\\-")
        .lines()
        .map(
            |line| match line.starts_with('.') || line.starts_with('\'') {
                true => format!("\\&{line}"),
                false => line.to_string(),
            },
        )
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Arg, ArgAction};

    #[test]
    fn the_page_names_commands_options_and_verbs() {
        let command = Command::new("siphon")
            .version("1.0")
            .about("A SIP proxy")
            .arg(
                Arg::new("config")
                    .long("config")
                    .short('c')
                    .help("The YAML config file")
                    .action(ArgAction::Set),
            )
            .subcommand(
                Command::new("ctl")
                    .about("Drive a running siphon")
                    .subcommand(Command::new("reload").about("Read the config again"))
                    .subcommand(
                        Command::new("gateways")
                            .about("Every destination")
                            .arg(Arg::new("group").required(false)),
                    ),
            );
        let page = render(&command);
        assert!(page.starts_with(".TH SIPHON 1"));
        assert!(page.contains("siphon \\- A SIP proxy"));
        assert!(page.contains("\\fB\\-c\\fR, \\fB\\-\\-config\\fR \\fICONFIG\\fR"));
        assert!(page.contains(".SS \"siphon ctl\""));
        assert!(page.contains("\\fBsiphon ctl gateways\\fR [\\fIGROUP\\fR]"));
        assert!(page.contains("\\fBsiphon ctl reload\\fR"));
        assert_eq!(escape(".x - y"), "\\&.x \\- y");
    }
}
