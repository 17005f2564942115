//! The SAM template keeps its promises: cfn-lint finds nothing, every function is an arm64
//! Rust binary of this workspace, every work queue has a dead-letter queue and a visibility
//! timeout of at least six times its consumer's timeout, workers report partial batch
//! failures, the vector index survives stack deletion, each function may read exactly the
//! secrets it lists, the default parameters give settings that parse, and every sample event
//! is JSON.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use pai_tests::template::{
    self, function_property, functions, own_env_vars, resources_of_type, workspace_root,
};
use serde_json::{Value, json};

const FUNCTIONS: [&str; 6] = ["ingest", "chunk", "embed", "tag", "chat", "sync"];

#[test]
fn cfn_lint_is_clean() {
    let root = workspace_root();
    let lint = root.join(".venv/bin/cfn-lint");
    if !lint.exists() {
        panic!("cfn-lint not installed: run scripts/setup.sh");
    }
    let out = Command::new(&lint)
        .arg("template.yaml")
        .current_dir(&root)
        .output()
        .expect("cfn-lint runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("cfn-lint template.yaml:\n{report}");
    assert!(
        out.status.success(),
        "cfn-lint found errors or warnings (exit {:?}):\n{report}",
        out.status.code()
    );
}

#[test]
fn every_function_is_an_arm64_binary_of_this_workspace() {
    let t = template::load();
    let fns = functions(&t);
    let mut binaries = BTreeSet::new();
    for (id, f) in &fns {
        let p = |name: &str| function_property(&t, f, name);
        assert_eq!(p("Runtime"), json!("provided.al2023"), "{id} Runtime");
        assert_eq!(p("Architectures"), json!(["arm64"]), "{id} Architectures");
        assert_eq!(p("Handler"), json!("bootstrap"), "{id} Handler");
        assert_eq!(
            p("CodeUri"),
            json!("./"),
            "{id} CodeUri (the workspace root)"
        );
        assert_eq!(p("Tracing"), json!("Active"), "{id} Tracing");
        assert_eq!(
            p("LoggingConfig")["LogFormat"],
            json!("JSON"),
            "{id} LogFormat"
        );
        assert!(
            p("MemorySize").is_u64() && p("Timeout").is_u64(),
            "{id} sets memory and timeout"
        );
        // Queue consumers are bounded by MaximumConcurrency; only the public chat URL, which
        // no queue bounds, may have a ceiling of its own.
        assert!(
            id == "ChatFunction" || f["Properties"]["ReservedConcurrentExecutions"].is_null(),
            "{id}: reserved concurrency would fight the queues' MaximumConcurrency"
        );
        assert_eq!(
            f["Metadata"]["BuildMethod"],
            json!("rust-cargolambda"),
            "{id}"
        );
        let binary = f["Metadata"]["BuildProperties"]["Binary"]
            .as_str()
            .unwrap_or_else(|| panic!("{id} has no BuildProperties.Binary"))
            .to_string();
        let (manifest, cargo) = function_manifest(id, f);
        assert!(
            cargo.contains(&format!("name = \"{binary}\"")),
            "{id}: {} declares no binary {binary}",
            manifest.display()
        );
        assert!(binaries.insert(binary.clone()), "{binary} built twice");
    }
    let expected: BTreeSet<String> = FUNCTIONS.iter().map(|f| format!("pai-{f}")).collect();
    assert_eq!(
        binaries, expected,
        "one function per crate under functions/"
    );
    let crates: BTreeSet<String> = std::fs::read_dir(workspace_root().join("functions"))
        .expect("functions/")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("Cargo.toml").exists())
        .map(|e| format!("pai-{}", e.file_name().to_string_lossy()))
        .collect();
    assert_eq!(binaries, crates, "every crate under functions/ is deployed");
}

/// The consumer of each queue: queue logical id → (function id, function, event).
fn consumers(t: &Value) -> BTreeMap<String, (String, Value, Value)> {
    let mut out = BTreeMap::new();
    for (id, f) in functions(t) {
        for (_, ev) in f["Properties"]["Events"]
            .as_object()
            .cloned()
            .unwrap_or_default()
        {
            if ev["Type"] != "SQS" {
                continue;
            }
            let queue = ev["Properties"]["Queue"]["Fn::GetAtt"][0]
                .as_str()
                .unwrap_or_else(|| panic!("{id}: SQS event Queue is not !GetAtt <Queue>.Arn"))
                .to_string();
            let previous = out.insert(queue.clone(), (id.clone(), f.clone(), ev.clone()));
            assert!(previous.is_none(), "{queue} has two consumers");
        }
    }
    out
}

#[test]
fn every_work_queue_has_a_dead_letter_queue_and_room_for_retries() {
    let t = template::load();
    let queues = resources_of_type(&t, "AWS::SQS::Queue");
    let consumers = consumers(&t);
    let dead_letter: BTreeSet<String> = queues
        .values()
        .filter_map(|q| {
            q["Properties"]["RedrivePolicy"]["deadLetterTargetArn"]["Fn::GetAtt"][0].as_str()
        })
        .map(str::to_string)
        .collect();
    let mut work = 0;
    for (id, q) in &queues {
        let p = &q["Properties"];
        assert_eq!(
            p["SqsManagedSseEnabled"],
            json!(true),
            "{id} is encrypted at rest"
        );
        if dead_letter.contains(id) {
            assert_eq!(
                p["MessageRetentionPeriod"],
                json!(1_209_600),
                "{id} keeps 14 days"
            );
            assert!(!consumers.contains_key(id), "nothing consumes the DLQ {id}");
            continue;
        }
        work += 1;
        let redrive = &p["RedrivePolicy"];
        assert!(redrive.is_object(), "{id} has no RedrivePolicy");
        assert_eq!(
            redrive["maxReceiveCount"],
            json!({"Ref": "MaxReceives"}),
            "{id}"
        );
        let (fn_id, f, _) = consumers
            .get(id)
            .unwrap_or_else(|| panic!("work queue {id} has no consumer"));
        let timeout = function_property(&t, f, "Timeout")
            .as_u64()
            .unwrap_or_else(|| panic!("{fn_id} has no numeric Timeout"));
        let visibility = p["VisibilityTimeout"]
            .as_u64()
            .unwrap_or_else(|| panic!("{id} has no numeric VisibilityTimeout"));
        assert!(
            visibility >= 6 * timeout,
            "{id}: VisibilityTimeout {visibility} < 6 x {fn_id} Timeout {timeout}"
        );
    }
    assert_eq!(work, 3, "chunk, embed and tag queues");
}

#[test]
fn workers_report_partial_batch_failures_and_model_queues_are_bounded() {
    let t = template::load();
    let consumers = consumers(&t);
    assert_eq!(consumers.len(), 3, "{:?}", consumers.keys());
    for (queue, (fn_id, _, ev)) in &consumers {
        let p = &ev["Properties"];
        assert!(
            p["FunctionResponseTypes"]
                .as_array()
                .is_some_and(|a| a.contains(&json!("ReportBatchItemFailures"))),
            "{fn_id} on {queue}: FunctionResponseTypes lacks ReportBatchItemFailures"
        );
        let batch = p["BatchSize"].as_u64().unwrap_or(10);
        assert!((1..=10).contains(&batch), "{fn_id}: BatchSize {batch}");
    }
    for (name, limit) in [("embed", "ModelConcurrency"), ("tag", "ModelConcurrency")] {
        let (id, f) = template::function(&t, name).expect("function");
        let ev = f["Properties"]["Events"]
            .as_object()
            .and_then(|e| e.values().find(|e| e["Type"] == "SQS"))
            .unwrap_or_else(|| panic!("{id} has no SQS event"))
            .clone();
        assert_eq!(
            ev["Properties"]["ScalingConfig"]["MaximumConcurrency"],
            json!({"Ref": limit}),
            "{id}: the model rate limit"
        );
    }
    assert_eq!(
        t["Parameters"]["ModelConcurrency"]["MinValue"],
        json!(2),
        "SQS minimum"
    );
}

/// The manifest (path and text) of the function crate that template function `f` builds.
fn function_manifest(id: &str, f: &Value) -> (std::path::PathBuf, String) {
    let binary = f["Metadata"]["BuildProperties"]["Binary"]
        .as_str()
        .unwrap_or_else(|| panic!("{id} has no BuildProperties.Binary"));
    let name = binary
        .strip_prefix("pai-")
        .unwrap_or_else(|| panic!("{id}: binary {binary} is not pai-<name>"));
    let manifest = workspace_root()
        .join("functions")
        .join(name)
        .join("Cargo.toml");
    let cargo = std::fs::read_to_string(&manifest)
        .unwrap_or_else(|e| panic!("{id}: {} ({e})", manifest.display()));
    (manifest, cargo)
}

/// The function crate's Lambda build settings (its `[package.metadata.lambda.build]` table).
fn lambda_build_config(id: &str, f: &Value) -> String {
    let (_, cargo) = function_manifest(id, f);
    let build = cargo
        .split_once("[package.metadata.lambda.build]")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    build.split("\n[").next().unwrap_or_default().to_string()
}

/// A function built with `panic = "abort"` loses its whole invocation to a panic, so it may
/// consume batches of one message only: a panicking message must fail alone.
#[test]
fn a_function_that_aborts_on_panic_takes_one_message_at_a_time() {
    let t = template::load();
    let consumers = consumers(&t);
    let mut aborting = BTreeSet::new();
    for (id, f) in functions(&t) {
        let config = lambda_build_config(&id, &f);
        assert!(
            config.contains("config = ["),
            "{id}: no Lambda build config"
        );
        if config.contains(r#"'profile.release.panic="abort"'"#) {
            aborting.insert(id);
        }
    }
    for (queue, (fn_id, _, ev)) in &consumers {
        let batch = ev["Properties"]["BatchSize"].as_u64().unwrap_or(10);
        assert!(
            batch == 1 || !aborting.contains(fn_id),
            "{fn_id} aborts on a panic but takes {batch} messages of {queue} at a time"
        );
    }
    assert!(
        aborting.contains("TagFunction") && !aborting.contains("ChunkFunction"),
        "the build settings are read: {aborting:?}"
    );
}

#[test]
fn the_vector_index_survives_the_stack() {
    let t = template::load();
    for (ty, what) in [
        ("AWS::S3Vectors::Index", "index"),
        ("AWS::S3Vectors::VectorBucket", "vector bucket"),
    ] {
        let found = resources_of_type(&t, ty);
        assert_eq!(found.len(), 1, "one {what}");
        for (id, r) in found {
            assert_eq!(r["DeletionPolicy"], json!("Retain"), "{id}");
            assert_eq!(r["UpdateReplacePolicy"], json!("Retain"), "{id}");
        }
    }
    let (_, index) = resources_of_type(&t, "AWS::S3Vectors::Index")
        .into_iter()
        .next()
        .expect("index");
    let p = &index["Properties"];
    assert_eq!(p["DataType"], json!("float32"));
    assert_eq!(p["DistanceMetric"], json!("cosine"));
    assert_eq!(p["Dimension"], json!({"Ref": "EmbeddingDimensions"}));
    assert_eq!(p["IndexName"], json!({"Ref": "VectorIndexName"}));
    assert_eq!(
        p["MetadataConfiguration"]["NonFilterableMetadataKeys"],
        json!(["text", "title"])
    );
}

#[test]
fn the_chat_url_allows_exactly_the_ui_origin_and_the_ui_is_routed() {
    let t = template::load();
    let chat = &functions(&t)["ChatFunction"];
    let url = &chat["Properties"]["FunctionUrlConfig"];
    assert_eq!(url["InvokeMode"], json!("RESPONSE_STREAM"));
    // CORS only when the UiOrigin parameter names an origin, and then exactly that one.
    let cors = &url["Cors"]["Fn::If"];
    assert_eq!(cors[0], json!("HasUiOrigin"));
    assert_eq!(cors[1]["AllowOrigins"], json!([{"Ref": "UiOrigin"}]));
    assert_eq!(cors[1]["AllowMethods"], json!(["POST"]));
    assert_eq!(cors[1]["AllowCredentials"], json!(false));
    assert_eq!(cors[2], json!({"Ref": "AWS::NoValue"}));
    assert_eq!(
        t["Conditions"]["HasUiOrigin"],
        json!({"Fn::Not": [{"Fn::Equals": [{"Ref": "UiOrigin"}, ""]}]})
    );
    let pattern = t["Parameters"]["UiOrigin"]["AllowedPattern"]
        .as_str()
        .expect("UiOrigin has a pattern");
    assert!(
        !pattern.contains('*'),
        "UiOrigin admits no wildcard: {pattern}"
    );
    // The ingest function serves the pages and tells them where chat is.
    let ingest = &functions(&t)["IngestFunction"];
    assert_eq!(
        ingest["Properties"]["Environment"]["Variables"]["CHAT_URL"],
        json!({"Fn::GetAtt": ["ChatFunctionUrl", "FunctionUrl"]})
    );
    let routes: BTreeSet<(String, String)> = ingest["Properties"]["Events"]
        .as_object()
        .expect("events")
        .values()
        .map(|e| {
            (
                e["Properties"]["Method"].as_str().unwrap_or("").to_string(),
                e["Properties"]["Path"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    // Every route of `shared::http::router` and `ui::routes` but the ones AWS serves
    // elsewhere: `/chat` (the chat function URL), `PUT /uploads/{job_id}` (a presigned S3
    // PUT) and `/metrics` (EMF metrics in CloudWatch).
    for (method, path) in [
        ("GET", "/health"),
        ("POST", "/webhooks/paperless"),
        ("POST", "/documents"),
        ("GET", "/jobs/{job_id}"),
        ("POST", "/jobs/{job_id}/retry"),
        ("POST", "/jobs/retry-failed"),
        ("GET", "/documents/{doc_id}/suggestions"),
        ("POST", "/documents/{doc_id}/suggestions/approve"),
        ("POST", "/documents/{doc_id}/approve"),
        ("POST", "/documents/{doc_id}/suggestions/undo"),
        ("POST", "/documents/{doc_id}/undo"),
        ("POST", "/documents/{doc_id}/retag"),
        ("GET", "/"),
        ("GET", "/ui/{file}"),
        ("GET", "/jobs"),
        ("GET", "/review"),
        ("GET", "/status"),
        ("GET", "/status/checks"),
    ] {
        assert!(
            routes.contains(&(method.to_string(), path.to_string())),
            "{method} {path} is not routed to the ingest function"
        );
    }
}

/// The SSM parameter names a policy statement allows `ssm:GetParameters` on.
fn allowed_secrets(f: &Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for policy in f["Properties"]["Policies"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        for st in policy["Statement"].as_array().cloned().unwrap_or_default() {
            let actions = match &st["Action"] {
                Value::Array(a) => a.clone(),
                one => vec![one.clone()],
            };
            if !actions
                .iter()
                .any(|a| a.as_str().is_some_and(|a| a.starts_with("ssm:")))
            {
                continue;
            }
            assert!(
                actions == vec![json!("ssm:GetParameters")],
                "only ssm:GetParameters: {actions:?}"
            );
            for r in st["Resource"].as_array().cloned().unwrap_or_default() {
                let arn = r["Fn::Sub"].as_str().unwrap_or_else(|| panic!("{r}"));
                let name = arn
                    .rsplit_once("parameter${SecretsPrefix}")
                    .unwrap_or_else(|| panic!("{arn} is not under SecretsPrefix"))
                    .1;
                names.insert(name.to_string());
            }
        }
    }
    names
}

#[test]
fn each_function_may_read_exactly_the_secrets_it_lists() {
    let t = template::load();
    for name in FUNCTIONS {
        let (id, f) = template::function(&t, name).expect("function");
        let listed: BTreeSet<String> = own_env_vars(&f)
            .get("SECRETS")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{id} has no SECRETS"))
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        assert_eq!(allowed_secrets(&f), listed, "{id}: IAM vs SECRETS");
    }
}

#[test]
fn default_parameters_give_settings_that_parse() {
    for name in FUNCTIONS {
        let env = template::default_env(name);
        for (k, v) in &env {
            assert!(
                !v.starts_with('<') || is_resource_var(k),
                "{name}: {k} = {v} is neither a literal nor a parameter's default"
            );
        }
        let map = env.into_iter().collect();
        if let Err(e) = shared::config::Settings::from_map(&map) {
            panic!("{name}: with the template's defaults, start-up fails: {e}");
        }
    }
}

fn is_resource_var(k: &str) -> bool {
    matches!(
        k,
        "STATE_TABLE"
            | "CACHE_TABLE"
            | "DOCUMENT_BUCKET"
            | "CHUNK_QUEUE_URL"
            | "EMBED_QUEUE_URL"
            | "TAG_QUEUE_URL"
            | "CHUNK_DLQ_URL"
            | "EMBED_DLQ_URL"
            | "TAG_DLQ_URL"
            | "VECTOR_BUCKET"
            | "CHAT_URL"
    )
}

#[test]
fn template_env_lists_globals_and_own_variables() {
    let ingest = template::template_env("ingest");
    for v in [
        "PAPERLESS_URL",
        "LLM_PROVIDER",
        "SECRETS_PREFIX",
        "STATE_TABLE",
        "SECRETS",
    ] {
        assert!(ingest.contains(v), "{v} missing from {ingest:?}");
    }
    assert!(!ingest.contains("CACHE_TABLE"));
    assert!(template::template_env("chunk").contains("EMBED_QUEUE_URL"));
}

#[test]
fn every_sample_event_is_json() {
    let dir = workspace_root().join("events");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).expect("events/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).expect("readable");
            if let Err(e) = serde_json::from_str::<Value>(&text) {
                panic!("{}: {e}", path.display());
            }
            n += 1;
        }
    }
    assert!(n >= 15, "only {n} JSON events in {}", dir.display());
}

/// Every policy statement of a function, with the statements behind `Fn::If` unwrapped.
fn statements(f: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for policy in f["Properties"]["Policies"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        for st in policy["Statement"].as_array().cloned().unwrap_or_default() {
            match st.get("Fn::If").and_then(Value::as_array) {
                Some(branches) => out.extend(
                    branches[1..]
                        .iter()
                        .filter(|b| b.is_object() && b.get("Ref").is_none())
                        .cloned(),
                ),
                None => out.push(st),
            }
        }
    }
    out
}

fn actions(st: &Value) -> Vec<String> {
    match &st["Action"] {
        Value::Array(a) => a
            .iter()
            .filter_map(|a| a.as_str().map(String::from))
            .collect(),
        one => one.as_str().map(String::from).into_iter().collect(),
    }
}

/// Bedrock grants name the configured model (or the code's default when none is set) in this
/// Region, or reach other Regions only through that model's inference profile: no
/// `foundation-model/*` in every Region, no `inference-profile/*`, and only the functions that
/// call a model may.
#[test]
fn bedrock_grants_name_only_the_configured_model() {
    use shared::providers::bedrock::{DEFAULT_CHAT_MODEL, DEFAULT_EMBEDDING_MODEL};
    let t = template::load();
    let defaults = &t["Mappings"]["BedrockDefaults"]["Models"];
    assert_eq!(
        defaults["Llm"],
        json!(DEFAULT_CHAT_MODEL),
        "template vs code"
    );
    assert_eq!(
        defaults["Embedding"],
        json!(DEFAULT_EMBEDDING_MODEL),
        "template vs code"
    );
    let expected: BTreeMap<&str, Vec<&str>> = BTreeMap::from([
        ("ingest", vec![]),
        ("chunk", vec![]),
        ("embed", vec!["Embedding"]),
        ("tag", vec!["Llm"]),
        ("chat", vec!["Llm", "Embedding"]),
        ("sync", vec![]),
    ]);
    for (name, roles) in expected {
        let (id, f) = template::function(&t, name).expect("function");
        let mut granted = BTreeSet::new();
        for st in statements(&f) {
            if !actions(&st).iter().any(|a| a.starts_with("bedrock:")) {
                continue;
            }
            let sid = st["Sid"].as_str().unwrap_or_default().to_string();
            let text = st["Resource"].to_string();
            assert!(!text.contains("inference-profile/*"), "{id} {sid}: {text}");
            if text.contains("foundation-model/*") {
                let profile = &st["Condition"]["StringEquals"]["bedrock:InferenceProfileArn"];
                assert!(
                    profile.to_string().contains("inference-profile/${Model}"),
                    "{id} {sid}: every model in every Region without the profile condition"
                );
            } else {
                assert!(
                    !text.contains("bedrock:*"),
                    "{id} {sid}: a direct grant must name this Region: {text}"
                );
            }
            let role = roles
                .iter()
                .find(|r| sid.contains(&format!("Invoke{r}Model")))
                .unwrap_or_else(|| panic!("{id} may invoke a model it does not use: {sid}"));
            granted.insert(*role);
        }
        assert_eq!(granted, roles.into_iter().collect(), "{id}");
    }
}

/// The public chat URL: `ChatAuth` picks its auth type, and the function learns which, so it
/// can refuse to start without API keys unless AWS checks callers (`API_AUTH=iam`).
#[test]
fn the_chat_url_authenticates_as_chat_auth_says() {
    let t = template::load();
    let (id, f) = template::function(&t, "chat").expect("chat");
    assert_eq!(
        f["Properties"]["FunctionUrlConfig"]["AuthType"],
        json!({"Fn::If": ["ChatOnIam", "AWS_IAM", "NONE"]}),
        "{id}"
    );
    assert_eq!(own_env_vars(&f)["API_AUTH"], json!({"Ref": "ChatAuth"}));
    assert_eq!(
        t["Parameters"]["ChatAuth"]["AllowedValues"],
        json!(["api_keys", "iam"])
    );
    for (id, f) in functions(&t) {
        for st in statements(&f) {
            assert!(
                !actions(&st).iter().any(|a| a == "s3vectors:ListVectors"),
                "{id}: no function lists the vector index"
            );
        }
    }
}

/// The queue ARNs (`!GetAtt <Queue>.Arn`) a statement grants `action` on.
fn granted_queues(f: &Value, action: &str) -> BTreeSet<String> {
    statements(f)
        .iter()
        .filter(|st| st["Effect"] == "Allow" && actions(st).iter().any(|a| a == action))
        .flat_map(|st| match &st["Resource"] {
            Value::Array(rs) => rs.clone(),
            one => vec![one.clone()],
        })
        .filter_map(|r| r["Fn::GetAtt"][0].as_str().map(String::from))
        .collect()
}

/// Healing on AWS needs IAM as much as code: each worker backs off on its own queue
/// (ChangeMessageVisibility) and defers a breaker refusal as a delayed copy (SendMessage), and
/// the functions that turn dead letters into failed jobs or move them back (sync, ingest) read
/// all three DLQs and may delete from them, without any right to send there.
#[test]
fn workers_back_off_on_their_own_queue_and_sync_and_ingest_read_the_dead_letters() {
    let t = template::load();
    let resources = &t["Resources"];
    for (queue, (id, f, _)) in consumers(&t) {
        let var = format!(
            "{}_QUEUE_URL",
            queue.trim_end_matches("Queue").to_uppercase()
        );
        let env = &f["Properties"]["Environment"]["Variables"];
        assert_eq!(env[&var]["Ref"], queue.as_str(), "{id}: {var} is its queue");
        for action in ["sqs:ChangeMessageVisibility", "sqs:SendMessage"] {
            assert!(
                granted_queues(&f, action).contains(&queue),
                "{id} may not {action} on its own queue {queue}"
            );
        }
    }
    let dead: BTreeSet<String> = resources_of_type(&t, "AWS::SQS::Queue")
        .into_iter()
        .filter(|(q, _)| q.contains("DeadLetter"))
        .map(|(q, _)| q)
        .collect();
    assert_eq!(dead.len(), 3, "{dead:?}");
    for id in ["IngestFunction", "SyncFunction"] {
        let f = &resources[id];
        let env = &f["Properties"]["Environment"]["Variables"];
        for q in &dead {
            let var = format!(
                "{}_DLQ_URL",
                q.trim_end_matches("DeadLetterQueue").to_uppercase()
            );
            assert_eq!(env[&var]["Ref"], q.as_str(), "{id}: {var}");
        }
        for action in ["sqs:ReceiveMessage", "sqs:DeleteMessage"] {
            assert_eq!(granted_queues(f, action), dead, "{id}: {action}");
        }
    }
    for (id, f) in functions(&t) {
        let sends = granted_queues(&f, "sqs:SendMessage");
        assert!(
            sends.is_disjoint(&dead),
            "{id} may send to a dead-letter queue"
        );
    }
}

/// Each function's DynamoDB rights are exactly what shared/src/lambda/grants.rs declares, which
/// the Lambda wiring enforces on every call (so the tests on moto fail on a call the
/// declaration lacks): per action, the families as `dynamodb:LeadingKeys`, on one table; no
/// SAM CRUD policy, no DynamoDB statement without the condition.
#[test]
fn each_function_may_touch_exactly_the_dynamodb_items_it_declares() {
    use shared::lambda::Function;
    use shared::lambda::grants::Table;
    let t = template::load();
    for function in Function::ALL {
        let (id, f) = template::function(&t, function.name()).expect("function");
        for policy in f["Properties"]["Policies"].as_array().unwrap() {
            let managed = policy.as_object().and_then(|o| o.keys().next().cloned());
            assert!(
                !managed.is_some_and(|k| k.starts_with("DynamoDB")),
                "{id} has a SAM DynamoDB policy: {policy}"
            );
        }
        let mut granted: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        for st in statements(&f) {
            for action in actions(&st)
                .into_iter()
                .filter(|a| a.starts_with("dynamodb:"))
            {
                let table = st["Resource"]["Fn::GetAtt"][0]
                    .as_str()
                    .unwrap_or_else(|| panic!("{id}: {action} on {}", st["Resource"]))
                    .to_string();
                let operator = match table.as_str() {
                    "StateTable" => "ForAllValues:StringEquals",
                    "CacheTable" => "ForAllValues:StringLike",
                    other => panic!("{id}: {action} on {other}"),
                };
                let keys = st["Condition"][operator]["dynamodb:LeadingKeys"]
                    .as_array()
                    .unwrap_or_else(|| {
                        panic!("{id}: {action} on {table} without {operator} LeadingKeys")
                    });
                granted
                    .entry((table, action))
                    .or_default()
                    .extend(keys.iter().map(|k| k.as_str().unwrap().to_string()));
            }
        }
        let mut declared: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        for (table, grants) in [
            (Table::State, function.state_grants()),
            (Table::Cache, function.cache_grants()),
        ] {
            for (family, how) in grants {
                for access in *how {
                    let (name, key) = match table {
                        Table::State => ("StateTable", family.to_string()),
                        Table::Cache => ("CacheTable", format!("{family}/*")),
                    };
                    declared
                        .entry((name.to_string(), access.action(table).to_string()))
                        .or_default()
                        .insert(key);
                }
            }
        }
        assert_eq!(
            granted, declared,
            "{id}: template IAM vs Function::*_grants"
        );
    }
}

/// The CloudWatch dashboard draws only metrics that exist: those the functions emit as EMF
/// (a name `shared::metrics` describes, under the `Function` dimension of one of the
/// functions), or an AWS service metric of a queue or function this template creates. It
/// shows the queues' oldest message age and the model cost.
#[test]
fn every_cloudwatch_dashboard_metric_exists() {
    let t = template::load();
    let body = t["Resources"]["Dashboard"]["Properties"]["DashboardBody"]["Fn::Sub"]
        .as_str()
        .expect("DashboardBody is a !Sub string");
    let dashboard: Value = serde_json::from_str(body).expect("the dashboard body is JSON");
    let queues = resources_of_type(&t, "AWS::SQS::Queue");
    let lambdas = functions(&t);
    let mut drawn = BTreeSet::new();
    for widget in dashboard["widgets"].as_array().expect("widgets") {
        let mut previous: Vec<Value> = Vec::new();
        for row in widget["properties"]["metrics"].as_array().expect("metrics") {
            let parts: Vec<Value> = row
                .as_array()
                .expect("a metric row is an array")
                .iter()
                .filter(|v| !v.is_object())
                .cloned()
                .collect();
            // "..." repeats the row above, its last values replaced by this row's.
            let full = if parts[0] == "..." {
                let kept = previous.len() - (parts.len() - 1);
                let mut full = previous[..kept].to_vec();
                full.extend_from_slice(&parts[1..]);
                full
            } else {
                parts
            };
            previous = full.clone();
            let text: Vec<&str> = full.iter().map(|v| v.as_str().unwrap_or("")).collect();
            let [namespace, name, dimension, value] = text[..] else {
                panic!("a metric with one dimension: {full:?}");
            };
            let resource = |v: &str| {
                v.strip_prefix("${")
                    .and_then(|v| v.strip_suffix('}'))
                    .map(|v| v.split('.').next().unwrap_or(v).to_string())
                    .unwrap_or_default()
            };
            match namespace {
                "PaperlessAi" => {
                    assert!(
                        shared::metrics::ALL.contains(&name),
                        "{name} is not a metric the functions emit"
                    );
                    assert_eq!(dimension, "Function", "{full:?}");
                    assert!(FUNCTIONS.contains(&value), "no function {value}: {full:?}");
                }
                "AWS/SQS" => {
                    assert!(
                        [
                            "ApproximateNumberOfMessagesVisible",
                            "ApproximateAgeOfOldestMessage"
                        ]
                        .contains(&name),
                        "{full:?}"
                    );
                    assert_eq!(dimension, "QueueName", "{full:?}");
                    assert!(
                        queues.contains_key(&resource(value)) && value.ends_with(".QueueName}"),
                        "not a queue of this template: {full:?}"
                    );
                }
                "AWS/Lambda" => {
                    assert!(
                        ["Errors", "Throttles", "Duration", "Invocations"].contains(&name),
                        "{full:?}"
                    );
                    assert_eq!(dimension, "FunctionName", "{full:?}");
                    assert!(
                        lambdas.contains_key(&resource(value)),
                        "not a function of this template: {full:?}"
                    );
                }
                other => panic!("unexpected namespace {other}: {full:?}"),
            }
            drawn.insert(format!("{name} {value}"));
        }
    }
    for queue in ["ChunkQueue", "EmbedQueue", "TagQueue"] {
        assert!(
            drawn.contains(&format!(
                "ApproximateAgeOfOldestMessage ${{{queue}.QueueName}}"
            )),
            "no oldest-message age for {queue}"
        );
    }
    for function in ["embed", "tag", "chat"] {
        assert!(
            drawn.contains(&format!("{} {function}", shared::metrics::MODEL_COST)),
            "no model cost of {function}"
        );
    }
}

/// `scripts/cost.sh` prices a counts file at the list prices it states: a hand-made fixture's
/// figure, computed here from those prices, and a clear refusal of a broken counts file.
#[test]
fn cost_sh_prices_counts_per_1000_documents() {
    let root = workspace_root();
    let run = |args: &[&str]| {
        Command::new("bash")
            .arg(root.join("scripts/cost.sh"))
            .args(args)
            .output()
            .expect("bash runs")
    };
    let fixture = root.join("tests/fixtures/cost-counts-tiny.json");
    let out = run(&["--json", fixture.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let figures: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Ten documents: 10 tag invocations of 1 s at 1 GB, 10 API requests, 1M DynamoDB read and
    // 1M write units, 1M SQS requests, 1,000 S3 PUTs and GETs, 1 GB of vectors written, 1M
    // vector queries and 0.50 USD of model tokens; then times 100 for 1,000 documents.
    let run_cost = 10.0 * 0.20 / 1e6
        + 10.0 * 0.0000133334
        + 10.0 * 1.00 / 1e6
        + 0.125
        + 0.625
        + 0.40
        + 0.005
        + 0.0004
        + 0.20
        + 2.50
        + 0.5;
    let total = figures["total_usd_per_1000_documents"].as_f64().unwrap();
    assert!(
        (total - run_cost * 100.0).abs() < 1e-4,
        "{total} != {}",
        run_cost * 100.0
    );
    // 1 GB each in DynamoDB, S3 and S3 Vectors, a month, times 100.
    let storage = figures["storage_usd_per_month_per_1000_documents"]
        .as_f64()
        .unwrap();
    assert!(
        (storage - (0.25 + 0.023 + 0.06) * 100.0).abs() < 1e-6,
        "{storage}"
    );
    let text = run(&[fixture.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("total: $435.5545 per 1,000 documents"),
        "{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    for (counts, says) in [
        (r#"{"documents": 0}"#, "documents must be > 0"),
        (
            r#"{"documents": 5, "sqs": {"requests": -3}}"#,
            "sqs.requests must be a number",
        ),
        (r#"[1, 2]"#, "not a counts JSON object"),
        ("not json", "not a counts JSON"),
    ] {
        let path = dir.path().join("counts.json");
        std::fs::write(&path, counts).unwrap();
        let out = run(&[path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{counts}: {err}"
        );
    }
}
