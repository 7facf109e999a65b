//! Snapshot tests of wasmpack's help and human output, and `wasmpack build` for real.

#![allow(clippy::panic, clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::*;

/// Replaces what changes from run to run (digests, sizes, ports, dates, revisions).
fn redact(s: &str, port: Option<u16>) -> String {
    let mut out = s.to_string();
    if let Some(p) = port {
        out = out.replace(&format!("127.0.0.1:{p}"), "127.0.0.1:[port]");
    }
    let mut result = String::new();
    let mut rest = out.as_str();
    while let Some(i) = rest.find("sha256:") {
        result.push_str(&rest[..i]);
        let hex_len = rest[i + 7..].chars().take_while(|c| c.is_ascii_hexdigit()).count();
        result.push_str("sha256:[digest]");
        rest = &rest[i + 7 + hex_len..];
    }
    result.push_str(rest);
    result
        .lines()
        .map(|l| {
            let words: Vec<String> = l
                .split(' ')
                .enumerate()
                .map(|(i, w)| {
                    let next_is_bytes = l.split(' ').nth(i + 1).is_some_and(|n| n.starts_with("bytes"));
                    if next_is_bytes && w.trim_start_matches('(').chars().all(|c| c.is_ascii_digit()) {
                        if w.starts_with('(') {
                            "([n]".to_string()
                        } else {
                            "[n]".to_string()
                        }
                    } else {
                        w.to_string()
                    }
                })
                .collect();
            let l = words.join(" ");
            if l.trim_start().starts_with("org.opencontainers.image.revision:")
                || l.trim_start().starts_with("org.opencontainers.image.source:")
            {
                String::new()
            } else {
                l
            }
        })
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn help_texts() {
    let commands: &[&[&str]] = &[
        &[],
        &["build"],
        &["push"],
        &["pull"],
        &["inspect"],
        &["check"],
        &["route"],
        &["manifests"],
        &["apply"],
        &["delete"],
        &["run"],
        &["stats"],
    ];
    for cmd in commands {
        let mut args: Vec<&str> = cmd.to_vec();
        args.push("--help");
        let o = wasmpack(&args, "", &[]);
        assert!(o.status.success());
        let name = if cmd.is_empty() {
            "help".to_string()
        } else {
            format!("help_{}", cmd[0])
        };
        insta::assert_snapshot!(name, stdout(&o));
    }
}

#[test]
fn human_output_of_push_and_inspect() {
    let reg = Registry::plain();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("model_router.wasm");
    std::fs::write(&file, filter_wasm()).unwrap();
    let reference = reg.reference("filters/model-router:v1");
    let env = [("SOURCE_DATE_EPOCH", "1767225600")];
    let o = wasmpack(&["push", file.to_str().unwrap(), &reference, "--plain-http"], "", &env);
    assert!(o.status.success(), "{}", stderr(&o));
    insta::assert_snapshot!("push_output", redact(&stdout(&o), Some(reg.port)));
    let o = wasmpack(&["inspect", &reference, "--plain-http"], "", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    insta::assert_snapshot!("inspect_output", redact(&stdout(&o), Some(reg.port)));
    // Reproducible: the same module and SOURCE_DATE_EPOCH give the same digest.
    let again = wasmpack(&["push", file.to_str().unwrap(), &reference, "--plain-http"], "", &env);
    assert_eq!(
        stdout(&again).lines().last(),
        stdout(&o).lines().find(|l| l.starts_with("digest:")).map(|l| &l[8..])
    );
}

#[test]
fn build_checks_and_budgets_the_real_filter() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let o = wasmpack(&["build", "--workspace", root.to_str().unwrap(), "--json"], "", &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let path = v["path"].as_str().unwrap();
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(v["size"], bytes.len());
    assert_eq!(v["sha256"], sha256(&bytes));
    assert_eq!(v["abiVersions"][0], "proxy_abi_version_0_2_1");

    let o = wasmpack(
        &["build", "--workspace", root.to_str().unwrap(), "--max-size", "10K"],
        "",
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("over the --max-size budget of 10240 bytes"),
        "{}",
        stderr(&o)
    );

    let o = wasmpack(
        &[
            "build",
            "--workspace",
            root.to_str().unwrap(),
            "--opt",
            "--output",
            "json",
        ],
        "",
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["path"].as_str().unwrap().ends_with("model_router.opt.wasm"));
    assert!(
        v["size"].as_u64().unwrap() < v["unoptimizedSize"].as_u64().unwrap(),
        "{v}"
    );
}

/// Configuration errors as a person reads them: one line, `file:line:column`, the field path
/// once, types in words, a suggestion for a misspelling.
#[test]
fn configuration_errors_in_words() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        (
            "misspelt-field.yaml",
            "models:\n  - name: a\n    destination:\n      - name: x\n",
        ),
        (
            "fraction.yaml",
            "models:\n  - name: a\n    destinations:\n      - name: x\n        weight: 1.5\n",
        ),
        (
            "negative.yaml",
            "models:\n  - name: a\n    destinations:\n      - {name: x, weight: -3}\n",
        ),
        ("not-a-bool.yaml", "bodyRouting: yes please\nmodels: []\n"),
        ("bad-policy.yaml", "onUnknownModel: rejekt\nmodels: []\n"),
        ("top-level-typo.yaml", "modles: []\n"),
        ("not-a-list.yaml", "models:\n  - name: a\n    destinations: x\n"),
        ("no-destinations.yaml", "models:\n  - name: a\n    destinations: []\n"),
        ("broken.json", "{\"models\": [}"),
        ("missing-models.yaml", "bodyRouting: true\n"),
    ];
    let mut out = String::new();
    for (name, text) in cases {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        let o = wasmpack(&["check", "--config", p.to_str().unwrap()], "", &[]);
        assert_eq!(o.status.code(), Some(1), "{name}");
        let e = stderr(&o).replace(&format!("{}/", tmp.path().display()), "");
        assert_eq!(e.lines().count(), 1, "one line: {e}");
        out.push_str(&e);
    }
    insta::assert_snapshot!("configuration_errors", out);
}

/// Every error and warning with a place in the file has its line and column, from the YAML
/// parser's positions: also where its key appears many times in the file (every model has a
/// `name`, every destination a `weight`), where the text search before them gave `"line": null`.
#[test]
fn every_problem_is_placed_in_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    // Two models with the same keys; each case changes the second one.
    let two = "models:\n\
               - name: a\n  limits: {requestsPerMinute: 10}\n  destinations:\n  - {name: x, host: x.ai, weight: 1}\n\
               - name: b\n  limits: {requestsPerMinute: 10}\n  destinations:\n  - {name: y, host: y.ai, weight: 1}\n";
    let second = |from: &str, to: &str| {
        let at = two.rfind(from).unwrap();
        format!("{}{to}{}", &two[..at], &two[at + from.len()..])
    };
    let cases: Vec<(&str, String)> = vec![
        ("duplicate-model.yaml", second("name: b", "name: a")),
        (
            "duplicate-destination.yaml",
            second("{name: y, host: y.ai, weight: 1}", "{name: y}\n  - {name: y}"),
        ),
        ("invalid-name.yaml", second("name: b", "name: b;c")),
        ("duplicate-key.yaml", second("- name: b\n", "- name: b\n  name: c\n")),
        (
            "second-model.yaml",
            second("requestsPerMinute: 10", "requestsPerMinute: 0"),
        ),
        (
            "second-model.json",
            r#"{"models": [
  {"name": "a", "destinations": [{"name": "x", "weight": 1}]},
  {"name": "b", "destinations": [{"name": "y", "weight": -1}]}]}
"#
            .to_string(),
        ),
        (
            "warnings.yaml",
            second("weight: 1}", "weight: 0}\n  - {name: z, host: z.ai}").replace("name: x, host: x.ai, ", "name: x, "),
        ),
    ];
    let mut out = String::new();
    for (name, text) in &cases {
        let p = tmp.path().join(name);
        std::fs::write(&p, text).unwrap();
        let o = wasmpack(&["check", "--config", p.to_str().unwrap(), "--output", "json"], "", &[]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        for (kind, list) in [("error", &v["errors"]), ("warning", &v["warnings"])] {
            for d in list.as_array().unwrap() {
                assert!(d["line"].is_u64() && d["column"].is_u64(), "{name}: not placed: {d}");
                out.push_str(&format!(
                    "{kind}: {name}:{}:{}: {}: {}\n",
                    d["line"],
                    d["column"],
                    d["path"].as_str().unwrap(),
                    d["message"].as_str().unwrap()
                ));
            }
        }
        // The human output says the same place.
        let o = wasmpack(&["check", "--config", p.to_str().unwrap()], "", &[]);
        let human = format!("{}{}", stdout(&o), stderr(&o)).replace(&format!("{}/", tmp.path().display()), "");
        let first = out.lines().rev().find(|l| l.contains(&format!(" {name}:"))).unwrap();
        let place = first.split(": ").nth(1).unwrap();
        assert!(human.contains(place), "{name}: {place} not in\n{human}");
    }
    insta::assert_snapshot!("problems_placed", out);
}

/// docs/configuration.schema.json is what `wasmpack schema` prints (regenerate with
/// `wasmpack schema > docs/configuration.schema.json`), and it accepts the example configurations
/// and refuses a misspelt field, as the parser does.
#[test]
fn the_committed_schema_is_fresh_and_agrees_with_the_parser() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let o = wasmpack(&["schema"], "", &[]);
    assert!(o.status.success());
    let committed = std::fs::read_to_string(root.join("docs/configuration.schema.json")).unwrap();
    assert_eq!(
        committed,
        stdout(&o),
        "docs/configuration.schema.json is stale: run `wasmpack schema > docs/configuration.schema.json`"
    );
    let script = r#"
import json, sys, yaml, jsonschema
schema = json.load(open(sys.argv[1]))
for f in sys.argv[2:]:
    jsonschema.validate(yaml.safe_load(open(f)), schema)
try:
    jsonschema.validate({"models": [{"name": "a", "destination": []}]}, schema)
    sys.exit("a misspelt field was accepted")
except jsonschema.ValidationError:
    pass
print("ok")
"#;
    let python = root.join(".venv/bin/python");
    let out = std::process::Command::new(&python)
        .args(["-c", script])
        .arg(root.join("docs/configuration.schema.json"))
        .arg(root.join("manifests/llm-gateway/config.yaml"))
        .arg(root.join("manifests/ml-canary/config.yaml"))
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e}; run scripts/setup.sh (it installs jsonschema with kubernetes-validate)",
                python.display()
            )
        });
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // At the edges of what the reader takes, the schema says the same: each file is valid for
    // both or for neither (an editor flags what `check` refuses, and nothing it takes).
    let dir = tempfile::tempdir().unwrap();
    let m = r#""models":[{"name":"m","destinations":[{"name":"d"}]}]"#;
    let cases = [
        (format!(r#"{{{m}}}"#), true),
        (r#"{"models":[{"name":"m","destinations":[]}]}"#.to_string(), false),
        (format!(r#"{{"maxBodyBytes":0,{m}}}"#), false),
        (format!(r#"{{"estimatedOutputTokens":0,{m}}}"#), false),
        (format!(r#"{{"limits":{{"requestsPerMinute":0}},{m}}}"#), false),
        (
            format!(
                r#"{{"limits":{{"requestsPerMinute":1,"by":"header:x-team","mode":"global"}},"rateLimitService":{{"cluster":"c","failureMode":"deny","timeout":"1s"}},{m}}}"#
            ),
            true,
        ),
        (
            format!(r#"{{"limits":{{"requestsPerMinute":1,"by":"team"}},{m}}}"#),
            false,
        ),
        (
            format!(r#"{{"limits":{{"requestsPerMinute":1,"mode":"globl"}},{m}}}"#),
            false,
        ),
        (
            format!(r#"{{"rateLimitService":{{"cluster":"c","failureMode":"open"}},{m}}}"#),
            false,
        ),
        (
            format!(r#"{{"failover":{{"probation":"1.5s","maxProbation":"5m","firstByteTimeout":"500ms"}},{m}}}"#),
            true,
        ),
        (format!(r#"{{"failover":{{"probation":"5"}},{m}}}"#), false),
        (format!(r#"{{"failover":{{"consecutiveFailures":0}},{m}}}"#), false),
        (
            format!(r#"{{"failover":{{"consecutiveFailures":1000,"trialRequests":100}},{m}}}"#),
            true,
        ),
        (format!(r#"{{"failover":{{"trialRequests":101}},{m}}}"#), false),
        (format!(r#"{{"failover":{{"failureStatuses":[429,599]}},{m}}}"#), true),
        (format!(r#"{{"failover":{{"failureStatuses":[200]}},{m}}}"#), false),
    ];
    let mut args = vec![root.join("docs/configuration.schema.json").display().to_string()];
    for (i, (json, valid)) in cases.iter().enumerate() {
        let f = dir.path().join(format!("c{i}.json"));
        std::fs::write(&f, json).unwrap();
        let o = wasmpack(&["check", f.to_str().unwrap()], "", &[]);
        assert_eq!(o.status.success(), *valid, "the reader on {json}: {}", stderr(&o));
        args.push(format!("{}={valid}", f.display()));
    }
    let script = r#"
import json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
for arg in sys.argv[2:]:
    f, want = arg.rsplit("=", 1)
    doc = json.load(open(f))
    got = not list(jsonschema.Draft202012Validator(schema).iter_errors(doc))
    if got != (want == "true"):
        sys.exit(f"the schema says valid={got} for {json.dumps(doc)}")
"#;
    let out = std::process::Command::new(&python)
        .args(["-c", script])
        .args(&args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn version_and_completions() {
    let o = wasmpack(&["--version"], "", &[]);
    let v = stdout(&o);
    assert!(
        v.starts_with("wasmpack 0.") && v.contains("filter ABI proxy-wasm 0.2.1") && v.contains("commit "),
        "{v}"
    );
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let o = wasmpack(&["completions", shell], "", &[]);
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        assert!(stdout(&o).contains("manifests"), "{shell}");
    }
    let o = wasmpack(&["completions", "tcsh"], "", &[]);
    assert_eq!(o.status.code(), Some(2));
}

/// A file the parser takes but `manifests` would refuse: each problem on its own line in the
/// parser's form (`error: FILE:LINE:COLUMN: path: words`), the warnings too, then the count.
#[test]
fn cross_resource_problems_are_one_line_each_with_the_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("shared.yaml");
    std::fs::write(
        &f,
        "models:\n- name: llama\n  destinations: [{name: a, host: a.ai.svc.cluster.local, port: 8000}]\n\
         - name: qwen\n  destinations: [{name: a, host: b.ai.svc.cluster.local, port: 8000}, {name: c}]\n",
    )
    .unwrap();
    let file = f.to_str().unwrap();
    let o = wasmpack(&["check", file], "", &[]);
    assert_eq!(o.status.code(), Some(1));
    let (out, err) = (stdout(&o), stderr(&o));
    assert!(
        out.contains(&format!(
            "warning: {file}:5:71: models[1].destinations[1].host: destination `c` has no host"
        )),
        "{out}"
    );
    assert!(
        err.contains(&format!(
            "error: {file}:5:25: models[1].destinations[0].name: destination `a` is also used"
        )),
        "{err}"
    );
    assert!(err.contains(&format!("error: {file}: not valid (1 problem)")), "{err}");
}
