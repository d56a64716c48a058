//! `energyguard hash-password`: the argon2 hash for a broker user's
//! `password_hash`. The password comes from standard input (its first line)
//! or, at a terminal, from a prompt without echo, asked twice; never from
//! the command line, where other users and the shell history would see it.

use std::io::{BufRead, IsTerminal};
use std::process::ExitCode;

use argon2::password_hash::SaltString;
use argon2::password_hash::rand_core::OsRng;
use argon2::{Argon2, PasswordHasher};

/// Shortest password accepted.
const MIN_PASSWORD_CHARS: usize = 8;

pub fn hash_password() -> ExitCode {
    let password = match read_password() {
        Ok(password) => password,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::FAILURE;
        }
    };
    if password.chars().count() < MIN_PASSWORD_CHARS {
        eprintln!("error: the password must have at least {MIN_PASSWORD_CHARS} characters");
        return ExitCode::FAILURE;
    }
    let salt = SaltString::generate(&mut OsRng);
    match Argon2::default().hash_password(password.as_bytes(), &salt) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: hashing failed: {error}");
            ExitCode::FAILURE
        }
    }
}

fn read_password() -> Result<String, String> {
    if !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("reading the password from standard input: {e}"))?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_string());
    }
    let first = rpassword::prompt_password("Password: ").map_err(|e| e.to_string())?;
    let again = rpassword::prompt_password("Again: ").map_err(|e| e.to_string())?;
    if first != again {
        return Err("the two passwords differ".into());
    }
    Ok(first)
}
