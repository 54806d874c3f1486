//! Reading a password: from PIGEON_PASSWORD, else a prompt without echo on
//! a terminal, else one line of standard input. Never from argv.

use std::io::{BufRead, IsTerminal};

use crate::failure::{Exit, Failure};

/// The environment variable a password may come from.
pub const PASSWORD_ENV: &str = "PIGEON_PASSWORD";

/// The password from the environment, if set.
pub fn from_env() -> Option<String> {
    std::env::var(PASSWORD_ENV).ok()
}

/// Read a password; with `confirm`, a terminal user types it twice.
pub fn read(prompt: &str, confirm: bool) -> Result<String, Failure> {
    if let Some(password) = from_env() {
        return Ok(password);
    }
    if !std::io::stdin().is_terminal() {
        return read_line(std::io::stdin().lock());
    }
    let unreadable =
        |e: std::io::Error| Failure::new(Exit::Generic, format!("cannot read the password: {e}"));
    let password = rpassword::prompt_password(prompt).map_err(unreadable)?;
    if confirm {
        let again = rpassword::prompt_password("Repeat it: ").map_err(unreadable)?;
        if again != password {
            return Err(Failure::new(Exit::Usage, "the passwords do not match"));
        }
    }
    Ok(password)
}

/// One line (without its line ending) from a non-terminal input.
fn read_line(mut input: impl BufRead) -> Result<String, Failure> {
    let mut line = String::new();
    let read = input
        .read_line(&mut line)
        .map_err(|e| Failure::new(Exit::Generic, format!("cannot read the password: {e}")))?;
    if read == 0 {
        return Err(Failure::new(
            Exit::Usage,
            format!("no password: set {PASSWORD_ENV} or pass it on standard input"),
        ));
    }
    let trimmed = line.strip_suffix('\n').unwrap_or(&line);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    Ok(trimmed.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_is_read_without_its_ending() {
        assert_eq!(read_line(&b"s3cret pw\r\nnext\n"[..]).unwrap(), "s3cret pw");
        assert_eq!(read_line(&b"last"[..]).unwrap(), "last");
    }

    #[test]
    fn empty_input_is_a_usage_error() {
        let failure = read_line(&b""[..]).unwrap_err();
        assert_eq!(failure.exit, Exit::Usage);
        assert!(failure.message.contains(PASSWORD_ENV));
    }
}
