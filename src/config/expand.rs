//! Step 1 of loading: `${VAR}` and `${VAR:-default}` expansion in the raw text.

pub(super) struct ExpandError {
    pub(super) line: usize,
    pub(super) message: String,
}

/// Expands `${VAR}` and `${VAR:-default}` (default used when VAR is unset or
/// empty, as in the shell) and turns `$$` into `$`. Text after a YAML comment
/// marker is copied untouched, so comments may mention `${VAR}` freely.
pub(super) fn expand_vars(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, ExpandError> {
    let mut out = String::with_capacity(text.len());
    for (index, line) in text.split_inclusive('\n').enumerate() {
        expand_line(line, index + 1, lookup, &mut out)?;
    }
    Ok(out)
}

pub(super) fn expand_line(
    line: &str,
    line_number: usize,
    lookup: &dyn Fn(&str) -> Option<String>,
    out: &mut String,
) -> Result<(), ExpandError> {
    let mut quote: Option<char> = None;
    let mut previous: Option<char> = None;
    let mut rest = line;
    while let Some(c) = rest.chars().next() {
        let after = &rest[c.len_utf8()..];
        match c {
            '$' if after.starts_with('$') => {
                out.push('$');
                rest = &after[1..];
                previous = Some('$');
                continue;
            }
            '$' if after.starts_with('{') => {
                let body = &after[1..];
                let Some(close) = body.find('}') else {
                    return Err(ExpandError {
                        line: line_number,
                        message: "`${` is not closed; write ${NAME} or ${NAME:-default} (or $$ for a literal $)".to_string(),
                    });
                };
                let value =
                    expand_reference(&body[..close], lookup).map_err(|message| ExpandError {
                        line: line_number,
                        message,
                    })?;
                out.push_str(&value);
                rest = &body[close + 1..];
                previous = Some('}');
                continue;
            }
            '#' if quote.is_none() && previous.is_none_or(char::is_whitespace) => {
                out.push_str(rest);
                return Ok(());
            }
            '"' | '\'' => match quote {
                Some(open) if open == c => quote = None,
                None if previous.is_none_or(|p| p.is_whitespace() || "[{,:-".contains(p)) => {
                    quote = Some(c)
                }
                _ => {}
            },
            '\\' if quote == Some('"') => {
                // An escaped character inside double quotes never closes them.
                out.push(c);
                let escaped_len = after.chars().next().map_or(0, char::len_utf8);
                out.push_str(&after[..escaped_len]);
                rest = &after[escaped_len..];
                previous = after[..escaped_len].chars().next().or(Some(c));
                continue;
            }
            _ => {}
        }
        out.push(c);
        previous = Some(c);
        rest = after;
    }
    Ok(())
}

/// Resolves the inside of one `${...}`.
pub(super) fn expand_reference(
    inner: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    let (name, default) = match inner.split_once(":-") {
        Some((name, default)) => (name, Some(default)),
        None => (inner, None),
    };
    let valid_name = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid_name {
        return Err(format!(
            "`${{{inner}}}` is not a variable reference; write ${{NAME}} or ${{NAME:-default}} (or $$ for a literal $)"
        ));
    }
    match (lookup(name), default) {
        (Some(value), Some(default)) if value.is_empty() => Ok(default.to_string()),
        (Some(value), _) => Ok(value),
        (None, Some(default)) => Ok(default.to_string()),
        (None, None) => Err(format!(
            "environment variable `{name}` is not set; set it or give a default with ${{{name}:-default}}"
        )),
    }
}
