//! Every `*.toml` under the repository's `examples/` directory (recursively, so example
//! subdirectories added later are covered too) is a valid config.
//!
//! Examples are parsed with a small fake environment: a variable they use without a default must
//! be one of those below.

use std::path::{Path, PathBuf};

use sv_core::config::parse;

fn fake_env(name: &str) -> Option<String> {
    let value = match name {
        "INSTANCE_NAME" => "living_room",
        "CONNECTOR_TYPE" => "example",
        "IOT2MQTT_PATH" => "/app",
        "MODE" => "production",
        "MQTT_HOST" => "localhost",
        "MQTT_PORT" => "1883",
        "MQTT_BASE_TOPIC" => "IoT2mqtt",
        "LOG_LEVEL" => "INFO",
        "TZ" => "UTC",
        "HOME" => "/root",
        "PATH" => "/usr/local/bin:/usr/bin:/bin",
        _ => return None,
    };
    Some(value.to_string())
}

fn toml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            toml_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "toml") {
            out.push(path);
        }
    }
}

#[test]
fn every_example_config_is_valid() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut files = Vec::new();
    toml_files(&examples, &mut files);
    files.sort();
    let names: Vec<String> = files
        .iter()
        .filter_map(|f| f.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    for expected in ["minimal.toml", "multi-process.toml"] {
        assert!(
            names.iter().any(|n| n == expected),
            "examples/{expected} not found among {names:?}"
        );
    }
    let mut failures = Vec::new();
    for file in &files {
        let source = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
        match parse(&source, file, &fake_env) {
            Ok(config) => assert!(
                !config.programs.is_empty() || config.bridge.is_some(),
                "{} supervises nothing",
                file.display()
            ),
            Err(e) => failures.push(e.to_string()),
        }
    }
    assert!(
        failures.is_empty(),
        "invalid examples:\n{}",
        failures.join("\n")
    );
}

#[test]
fn the_multi_process_example_means_what_it_says() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/multi-process.toml");
    let source = std::fs::read_to_string(&path).expect("multi-process.toml");
    let config = parse(&source, &path, &fake_env).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = config.programs.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["api", "coordinator", "metrics", "migrate", "stream"]
    );
    let coordinator = &config.programs[1];
    assert!(
        coordinator
            .environment
            .contains(&("INSTANCE".to_string(), "living_room".to_string())),
        "{:?}",
        coordinator.environment
    );
    assert!(!config.programs[2].critical);
    assert!(config.bridge.is_some());
}

#[test]
fn the_full_example_in_the_config_reference_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/config.md");
    let doc = std::fs::read_to_string(&path).expect("docs/config.md");
    let section = doc
        .split("## Full example")
        .nth(1)
        .expect("docs/config.md has a \"Full example\" section");
    let block = section
        .split("```toml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a toml code block in the full example");
    let config = parse(block, &path, &fake_env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.programs.len(), 5);
    assert!(config.bridge.is_some());
}
