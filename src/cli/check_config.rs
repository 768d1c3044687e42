//! `check-config`'s checks beyond parsing: the programs the agent will run exist, and `dates`
//! fires again. A missing absolute path is an error; a bare name not on this PATH is a warning,
//! because the agent's PATH (set by its unit) may differ from the caller's.

use std::path::{Path, PathBuf};

use crate::config::{Hook, Settings};
use crate::health::CheckSpec;

/// One finding: an error makes the config invalid (exit 2), a warning does not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub error: bool,
    pub message: String,
}

/// Every program the agent may start, with the key that names it.
fn programs(settings: &Settings) -> Vec<(String, String)> {
    let mut list = vec![(
        "system.nixos_rebuild".to_owned(),
        settings.system.nixos_rebuild.clone(),
    )];
    if settings.allow_reboot
        && let Some(program) = settings.system.reboot_command.first()
    {
        list.push(("system.reboot_command".into(), program.clone()));
    }
    for hook in [
        Hook::Success,
        Hook::Failure,
        Hook::Rollback,
        Hook::RebootNeeded,
    ] {
        if let Some(program) = settings.hooks.argv(hook).first() {
            list.push((format!("hooks.{}", hook.key()), program.clone()));
        }
    }
    let config = &settings.health_checks;
    let mut uses_systemctl = false;
    for (phase, specs) in [("pre", &config.pre), ("post", &config.post)] {
        for (i, spec) in specs.iter().enumerate() {
            match spec {
                CheckSpec::Command(c) => {
                    if let Some(program) = c.argv.first() {
                        list.push((format!("health_checks.{phase}[{i}].argv"), program.clone()));
                    }
                }
                CheckSpec::Systemd(_) => uses_systemctl = true,
                _ => {}
            }
        }
    }
    if uses_systemctl {
        list.push(("system.systemctl".into(), settings.system.systemctl.clone()));
    }
    list
}

/// Where `program` is: `Ok(path)`, or why it is not there.
fn locate(program: &str, path_var: Option<&std::ffi::OsStr>) -> Result<PathBuf, Missing> {
    if program.contains('/') {
        let path = Path::new(program);
        return match std::fs::metadata(path) {
            Ok(m) if m.is_file() && is_executable(&m) => Ok(path.to_owned()),
            Ok(_) => Err(Missing::NotExecutable),
            Err(_) if path.is_absolute() => Err(Missing::NoSuchFile),
            Err(_) => Err(Missing::Relative),
        };
    }
    std::env::split_paths(path_var.unwrap_or_default())
        .map(|dir| dir.join(program))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && is_executable(&m)))
        .ok_or(Missing::NotOnPath)
}

fn is_executable(m: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    m.permissions().mode() & 0o111 != 0
}

#[derive(Debug, PartialEq, Eq)]
enum Missing {
    NoSuchFile,
    NotExecutable,
    Relative,
    NotOnPath,
}

/// What is wrong or doubtful in an otherwise valid config. `programs` is the PATH to search for
/// them (`Some(None)`: no PATH), or `None` to not look for programs at all.
pub fn findings(settings: &Settings, programs: Option<Option<&std::ffi::OsStr>>) -> Vec<Finding> {
    let mut found = Vec::new();
    if !settings.dates.is_empty()
        && let Ok(event) = settings.dates.parse::<crate::calendar::CalendarEvent>()
    {
        let local = jiff::tz::TimeZone::system();
        if event.next_after(jiff::Timestamp::now(), &local).is_none() {
            found.push(Finding {
                error: true,
                message: format!(
                    "dates: \"{}\" never fires again; give a recurring event (e.g. \"04:40\" or \
                     \"Sun 03:00\") or \"\" for no scheduled poll",
                    settings.dates
                ),
            });
        }
    }
    let Some(path_var) = programs else {
        return found;
    };
    for (key, program) in self::programs(settings) {
        let (error, why) = match locate(&program, path_var) {
            Ok(_) => continue,
            Err(Missing::NoSuchFile) => (true, "no such file".to_owned()),
            Err(Missing::NotExecutable) => (true, "not an executable file".to_owned()),
            Err(Missing::Relative) => (
                true,
                "a relative path (the agent runs in another directory); give an absolute path"
                    .to_owned(),
            ),
            Err(Missing::NotOnPath) => (
                false,
                "not found on this PATH; the agent's PATH may differ: name it by absolute path \
                 to be sure"
                    .to_owned(),
            ),
        };
        found.push(Finding {
            error,
            message: format!("{key}: program \"{program}\": {why}"),
        });
    }
    found
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    fn settings(extra: &str) -> Settings {
        let text = format!(
            "host = \"web1\"\n{extra}\n[hydra]\ninstance = \"https://h\"\nproject = \"p\"\njobset = \"j\"\n"
        );
        Settings::from_toml(&text, Path::new("t.toml")).unwrap()
    }

    #[test]
    fn programs_are_looked_up() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "").unwrap();
        let path_var = dir.path().as_os_str();
        let s = settings(&format!(
            "dates = \"\"\n[system]\nnixos_rebuild = \"tool\"\n[hooks]\non_success = [\"{}\"]\n\
             on_failure = [\"/nonexistent/notify-me\"]\non_rollback = [\"not-there\"]\n\
             on_reboot_needed = [\"{}\"]\n\
             [[health_checks.pre]]\nkind = \"command\"\nargv = [\"./relative\"]\n",
            tool.display(),
            plain.display()
        ));
        let found = findings(&s, Some(Some(path_var)));
        let text: Vec<String> = found
            .iter()
            .map(|f| format!("{} {}", f.error, f.message))
            .collect();
        assert_eq!(
            text,
            [
                "true hooks.on_failure: program \"/nonexistent/notify-me\": no such file",
                "false hooks.on_rollback: program \"not-there\": not found on this PATH; the \
                 agent's PATH may differ: name it by absolute path to be sure",
                format!(
                    "true hooks.on_reboot_needed: program \"{}\": not an executable file",
                    plain.display()
                )
                .as_str(),
                "true health_checks.pre[0].argv: program \"./relative\": a relative path (the \
                 agent runs in another directory); give an absolute path",
            ]
        );
        let none = findings(&settings("dates = \"\""), Some(Some(OsStr::new(""))));
        assert_eq!(
            none.len(),
            1,
            "nixos-rebuild not on an empty PATH: {none:?}"
        );
        assert!(!none[0].error);
    }

    #[test]
    fn dates_that_never_fire_again_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path_var = dir.path().as_os_str();
        let found = findings(
            &settings("dates = \"2020-01-01\"\n[system]\nnixos_rebuild = \"/bin/sh\""),
            Some(Some(path_var)),
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].error && found[0].message.contains("never fires again"));
        assert!(
            findings(
                &settings("dates = \"Sun 03:00\"\n[system]\nnixos_rebuild = \"/bin/sh\""),
                Some(Some(path_var))
            )
            .is_empty()
        );
        let missing = settings("dates = \"\"\n[hooks]\non_success = [\"/nonexistent\"]");
        assert!(findings(&missing, None).is_empty(), "--skip-programs");
    }
}
