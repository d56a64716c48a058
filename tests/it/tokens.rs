//! Token hygiene at start: short tokens refused, a data directory only its
//! owner can read, and an admin token file other users can read refused.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use common::service::Service;

fn serve(dir: &std::path::Path, config: &str, env_token: Option<&str>) -> std::process::Output {
    std::fs::write(dir.join("t.toml"), config).expect("write config");
    let mut command = Command::new(env!("CARGO_BIN_EXE_energyguard"));
    command
        .args(["serve", "--config", "t.toml"])
        .current_dir(dir)
        .env_remove("ENERGYGUARD_API_TOKEN");
    if let Some(token) = env_token {
        command.env("ENERGYGUARD_API_TOKEN", token);
    }
    command.output().expect("run")
}

#[test]
fn short_tokens_are_refused_at_start_naming_where_they_came_from() {
    let dir = tempfile::tempdir().expect("temp dir");
    let short = serve(
        dir.path(),
        "[[auth.tokens]]\ntoken = \"short\"\nrole = \"read\"\n",
        None,
    );
    assert_eq!(short.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&short.stderr);
    assert!(stderr.contains("auth.tokens[0].token"), "{stderr}");

    let from_env = serve(
        dir.path(),
        "[http]\nlisten = \"127.0.0.1:0\"\n[mqtt]\nlisten = \"127.0.0.1:0\"\n",
        Some("a"),
    );
    assert!(!from_env.status.success());
    let stderr = String::from_utf8_lossy(&from_env.stderr);
    assert!(stderr.contains("ENERGYGUARD_API_TOKEN"), "{stderr}");
}

#[tokio::test]
async fn the_data_directory_is_private_and_a_readable_admin_token_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let s = Service::start_in(dir.path(), "");
    let mode = std::fs::metadata(dir.path().join("data"))
        .expect("data dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
    drop(s);

    // With no token configured, the generated one is used only while
    // nobody else can read it.
    let data = dir.path().join("data");
    let config = format!(
        "data_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:0\"\n[mqtt]\nlisten = \"127.0.0.1:0\"\n",
        data.display()
    );
    std::fs::write(
        data.join("admin.token"),
        "0123456789abcdef0123456789abcdef\n",
    )
    .expect("token");
    std::fs::set_permissions(
        data.join("admin.token"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let refused = serve(dir.path(), &config, None);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("chmod 600"), "{stderr}");
}
