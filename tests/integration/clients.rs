//! The generated clients against the real server. Each language's `clients/<lang>/run-tests.sh`
//! installs what it needs (through `clients/tools.sh`, cached under `target/client-tools`), then
//! runs that client's tests and example against the endpoint it is given. The server requires
//! an API key, so the clients' bearer metadata is exercised too. Each language runs again
//! against a mutual-TLS server that knows the client certificate's subject, with the CA and the
//! certificate in the scripts' `DEEPRECALL_TLS_*` variables: its TLS tests.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Instant;

use deeprecall::access::{KeyEntry, Scope};
use deeprecall::config::Config;
use deeprecall::secret::Secret;

use crate::common::TestServer;
use crate::tls_harness::{Authority, Files, TlsServer};

/// The key the scripts send (`DEEPRECALL_API_KEY`).
const CLIENT_KEY: &str = "client-tests-key-000001";

/// Longest a language's script may take, installs on a fresh machine included.
const SCRIPT_TIMEOUT_SECONDS: &str = "1200";

/// Requires `CLIENT_KEY`, with every scope, on every call.
fn with_client_key(config: &mut Config) {
    config.auth.keys = vec![KeyEntry {
        name: "client-tests".into(),
        key: Secret::new(CLIENT_KEY),
        sha256: None,
        subject: None,
        scopes: vec![Scope::Admin],
        collections: None,
        requests_per_minute: None,
        burst: None,
    }];
}

/// Also serves gRPC-Web, for the clients that speak it.
fn with_client_key_and_grpc_web(config: &mut Config) {
    with_client_key(config);
    config.server.grpc_web = true;
}

/// A path inside the repository.
fn in_repo(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// Runs `command` to its end. The server runs on the test's runtime, so the wait happens off
/// that runtime.
async fn output_of(mut command: Command) -> Output {
    let program = format!("{command:?}");
    tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("the runner does not panic")
        .unwrap_or_else(|error| panic!("{program} cannot start: {error}"))
}

/// What the scripts read from their environment, besides the endpoint.
const SCRIPT_VARIABLES: [&str; 4] = [
    "DEEPRECALL_API_KEY",
    "DEEPRECALL_TLS_CA",
    "DEEPRECALL_TLS_CLIENT_CERT",
    "DEEPRECALL_TLS_CLIENT_KEY",
];

/// Runs `clients/<language>/run-tests.sh <endpoint>` with `variables` (and none of the other
/// `SCRIPT_VARIABLES` the test's own environment may hold) and fails with its output unless it
/// passes.
async fn run_client_tests(language: &'static str, endpoint: &str, variables: &[(&str, PathBuf)]) {
    let started = Instant::now();
    let mut command = Command::new("timeout");
    command
        .args(["--kill-after=10", SCRIPT_TIMEOUT_SECONDS, "bash"])
        .arg(in_repo(&format!("clients/{language}/run-tests.sh")))
        .arg(endpoint);
    for name in SCRIPT_VARIABLES {
        command.env_remove(name);
    }
    command.envs(variables.iter().map(|(name, value)| (name, value)));
    let output = output_of(command).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the {language} client tests failed ({}; 124 means they timed out after \
         {SCRIPT_TIMEOUT_SECONDS} s)\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status,
    );
    println!(
        "{language} client tests passed in {:.1} s\n{stdout}",
        started.elapsed().as_secs_f64()
    );
}

/// Runs a language's script against a server requiring `CLIENT_KEY`.
async fn run_with_client_key(language: &'static str, configure: impl FnOnce(&mut Config)) {
    let server = TestServer::start_with(configure).await;
    let key = [("DEEPRECALL_API_KEY", PathBuf::from(CLIENT_KEY))];
    run_client_tests(language, &server.endpoint, &key).await;
}

#[tokio::test]
async fn python_client_adds_queries_batches_and_raises_status_codes() {
    run_with_client_key("python", with_client_key).await;
}

#[tokio::test]
async fn typescript_client_works_over_grpc_and_grpc_web() {
    run_with_client_key("typescript", with_client_key_and_grpc_web).await;
}

#[tokio::test]
async fn go_example_runs_against_the_server() {
    run_with_client_key("go", with_client_key).await;
}

/// The common name of the client certificate the scripts present over mutual TLS.
const CLIENT_COMMON_NAME: &str = "client-tests";

/// A server requiring a client certificate signed by a throwaway CA, whose key file lists the
/// certificate's subject instead of a key, and the PEM files its clients need.
struct MutualTls {
    server: TlsServer,
    /// The CA that signed the server's certificate (and the client's).
    ca: PathBuf,
    /// The client certificate, subject `O=Example, CN=client-tests`, and its key.
    cert: PathBuf,
    key: PathBuf,
    _files: Files,
}

impl MutualTls {
    async fn start(grpc_web: bool) -> MutualTls {
        let authority = Authority::new("client tests CA");
        let files = Files::new();
        files.serve(&authority.server());
        let client_ca = files.write("client-ca.crt", &authority.pem);
        let client = files.client(
            &authority,
            Some(("client", &authority.client(CLIENT_COMMON_NAME))),
        );
        let server = TlsServer::start(&files, &client, |config| {
            config.tls.client_ca = Some(client_ca);
            config.server.grpc_web = grpc_web;
            config.auth.keys = vec![KeyEntry {
                name: "client-tests".into(),
                key: Secret::default(),
                sha256: None,
                subject: Some(format!("CN={CLIENT_COMMON_NAME},O=Example")),
                scopes: vec![Scope::Admin],
                collections: None,
                requests_per_minute: None,
                burst: None,
            }];
        })
        .await;
        let file = |path: Option<PathBuf>| path.expect("written by Files::client");
        MutualTls {
            server,
            ca: file(client.ca),
            cert: file(client.cert),
            key: file(client.key),
            _files: files,
        }
    }
}

/// Runs a language's script against a `MutualTls` server: the scripts get the CA, the
/// certificate and its key as files (`DEEPRECALL_TLS_*`) and no API key.
async fn run_over_mutual_tls(language: &'static str, grpc_web: bool) {
    let tls = MutualTls::start(grpc_web).await;
    let variables = [
        ("DEEPRECALL_TLS_CA", tls.ca.clone()),
        ("DEEPRECALL_TLS_CLIENT_CERT", tls.cert.clone()),
        ("DEEPRECALL_TLS_CLIENT_KEY", tls.key.clone()),
    ];
    run_client_tests(language, &tls.server.endpoint, &variables).await;
    tls.server.stop().await;
}

#[tokio::test]
async fn python_client_calls_over_mutual_tls_with_its_certificate() {
    run_over_mutual_tls("python", false).await;
}

#[tokio::test]
async fn typescript_client_calls_over_mutual_tls_with_its_certificate() {
    run_over_mutual_tls("typescript", true).await;
}

#[tokio::test]
async fn go_example_runs_over_mutual_tls_with_its_certificate() {
    run_over_mutual_tls("go", false).await;
}

/// What `buf curl` printed: the messages on stdout, a failed call's status on stderr.
struct Curled {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Curled {
    /// The messages, each printed as one JSON value.
    fn messages(&self) -> Vec<serde_json::Value> {
        serde_json::Deserializer::from_str(&self.stdout)
            .into_iter::<serde_json::Value>()
            .collect::<Result<Vec<_>, _>>()
            .unwrap_or_else(|error| panic!("not JSON messages ({error}):\n{}", self.stdout))
    }

    /// The last message's result, for a Query.
    fn query_result(&self) -> serde_json::Value {
        assert!(self.success, "{}", self.stderr);
        let messages = self.messages();
        messages
            .last()
            .map(|last| last["result"].clone())
            .unwrap_or_default()
    }

    /// The failed call's status code, as buf names it (`invalid_argument`, …).
    fn error_code(&self) -> Option<String> {
        assert!(!self.success, "the call succeeded: {}", self.stdout);
        serde_json::from_str::<serde_json::Value>(self.stderr.trim())
            .ok()?
            .get("code")?
            .as_str()
            .map(str::to_string)
    }
}

/// The answer of a Query's result as buf prints it; empty when there is none.
fn answer_of(result: &serde_json::Value) -> &str {
    result["answer"].as_str().unwrap_or_default()
}

/// Installs the TypeScript package's node_modules, buf among them.
async fn install_buf() {
    let mut install = Command::new("bash");
    install.arg(in_repo("clients/tools.sh")).arg("node");
    let tools = output_of(install).await;
    assert!(
        tools.status.success(),
        "clients/tools.sh node failed:\n{}",
        String::from_utf8_lossy(&tools.stderr)
    );
}

/// Runs `buf curl` (from the TypeScript package's pinned node_modules) with `args`, off the
/// runtime the server runs on.
async fn buf_curl(args: Vec<String>) -> Curled {
    let mut command = Command::new("timeout");
    command
        .args(["--kill-after=5", "120"])
        .arg(in_repo("clients/typescript/node_modules/.bin/buf"))
        .arg("curl")
        .args(&args);
    let output = output_of(command).await;
    Curled {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The README's `buf curl` commands against the real server: discovery through reflection,
/// health without a key, the key as a header, a server stream as JSON messages, a refused
/// call's status, and gRPC-Web over HTTP/1.1.
#[tokio::test]
async fn buf_curl_finds_and_calls_the_api_through_reflection() {
    let server = TestServer::start_with(with_client_key_and_grpc_web).await;
    install_buf().await;

    let endpoint = server.endpoint.as_str();
    let auth = format!("authorization: Bearer {CLIENT_KEY}");
    let method = |name: &str| format!("{endpoint}/{name}");
    let grpc = |extra: &[&str]| -> Vec<String> {
        ["--protocol", "grpc", "--http2-prior-knowledge"]
            .iter()
            .chain(extra)
            .map(|arg| arg.to_string())
            .collect()
    };
    let services = buf_curl(grpc(&["--list-services", endpoint])).await;
    assert!(services.success, "{}", services.stderr);
    for service in ["deeprecall.v1.DeepRecall", "grpc.health.v1.Health"] {
        assert!(
            services.stdout.lines().any(|line| line == service),
            "{}",
            services.stdout
        );
    }

    let health_check = method("grpc.health.v1.Health/Check");
    let health = buf_curl(grpc(&[
        "-d",
        r#"{"service": "deeprecall.v1.DeepRecall"}"#,
        &health_check,
    ]))
    .await;
    assert!(health.success, "{}", health.stderr);
    assert_eq!(
        health.messages(),
        vec![serde_json::json!({"status": "SERVING"})]
    );

    let add_documents = method("deeprecall.v1.DeepRecall/AddDocuments");
    let documents = r#"{"collection": "default", "documents": [{"id": "kestrel", "content": "Kestrel Fabrication is headquartered in Tampere.", "metadata": {"kind": "supplier"}}]}"#;
    let keyless = buf_curl(grpc(&["-d", documents, &add_documents])).await;
    assert_eq!(
        keyless.error_code().as_deref(),
        Some("unauthenticated"),
        "{}",
        keyless.stderr
    );
    let added = buf_curl(grpc(&["-H", &auth, "-d", documents, &add_documents])).await;
    assert!(added.success, "{}", added.stderr);
    assert_eq!(
        added.messages()[0]["documentCount"],
        "1",
        "{}",
        added.stdout
    );

    let query = method("deeprecall.v1.DeepRecall/Query");
    let question = r#"{"query": "Where is Kestrel Fabrication headquartered?", "filters": {"kind": "supplier"}, "budget": {"maxSearchCalls": 4}}"#;
    let streamed = buf_curl(grpc(&["-H", &auth, "-d", question, &query])).await;
    let result = streamed.query_result();
    assert!(
        streamed.messages().len() > 1,
        "trace events come first: {}",
        streamed.stdout
    );
    assert!(answer_of(&result).contains("Tampere"), "{result}");
    assert_eq!(result["citations"], serde_json::json!(["kestrel"]));

    let empty = buf_curl(grpc(&["-H", &auth, "-d", r#"{"query": ""}"#, &query])).await;
    assert_eq!(
        empty.error_code().as_deref(),
        Some("invalid_argument"),
        "{}",
        empty.stderr
    );

    let over_web = buf_curl(
        [
            "--protocol",
            "grpcweb",
            "-H",
            &auth,
            "-d",
            r#"{"query": "Where is Kestrel?"}"#,
            &query,
        ]
        .map(str::to_string)
        .to_vec(),
    )
    .await;
    let result = over_web.query_result();
    assert!(answer_of(&result).contains("Tampere"), "{result}");
}

/// The README's TLS flags of `buf curl` against a mutual-TLS server: reflection and a call with
/// the CA and the client certificate, and the same call refused without the certificate.
#[tokio::test]
async fn buf_curl_calls_over_mutual_tls_with_the_readmes_flags() {
    let tls = MutualTls::start(false).await;
    install_buf().await;
    let endpoint = tls.server.endpoint.as_str();
    let [ca, cert, key] = [&tls.ca, &tls.cert, &tls.key].map(|path| path.display().to_string());
    let get_stats = format!("{endpoint}/deeprecall.v1.DeepRecall/GetStats");
    let with = |flags: &[&str], call: &[&str]| -> Vec<String> {
        ["--protocol", "grpc"]
            .iter()
            .chain(flags)
            .chain(call)
            .map(|arg| arg.to_string())
            .collect()
    };
    let identity = ["--cacert", &ca, "--cert", &cert, "--key", &key];

    let services = buf_curl(with(&identity, &["--list-services", endpoint])).await;
    assert!(services.success, "{}", services.stderr);
    assert!(
        services
            .stdout
            .lines()
            .any(|line| line == "deeprecall.v1.DeepRecall"),
        "{}",
        services.stdout
    );
    let stats = buf_curl(with(&identity, &["-d", "{}", &get_stats])).await;
    assert!(stats.success, "{}", stats.stderr);
    assert_eq!(
        stats.messages()[0]["model"],
        "extractive",
        "{}",
        stats.stdout
    );

    // Without the certificate the handshake fails, reflection with it: had the connection been
    // let in, reflection (which needs no key) would answer and the call be refused as
    // unauthenticated.
    let anonymous = buf_curl(with(&["--cacert", &ca], &["-d", "{}", &get_stats])).await;
    assert!(!anonymous.success, "{}", anonymous.stdout);
    assert!(
        !anonymous.stderr.contains("unauthenticated"),
        "the handshake let the call in: {}",
        anonymous.stderr
    );
    // Without the CA, the server's certificate is not trusted (buf says why with -v only).
    let untrusted = buf_curl(with(&identity[2..], &["-v", "-d", "{}", &get_stats])).await;
    assert!(!untrusted.success, "{}", untrusted.stdout);
    assert!(
        untrusted
            .stderr
            .contains("x509: certificate signed by unknown authority"),
        "{}",
        untrusted.stderr
    );
    tls.server.stop().await;
}
