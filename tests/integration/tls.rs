//! TLS on the server's own ports: gRPC, the HTTP API and the metrics port over TLS, mutual TLS
//! with the certificate subject naming the caller, certificates rotated on file change and on
//! SIGHUP without dropping open connections, and the CLI's TLS options. Certificates are made
//! at test time by a throwaway CA (tls_harness.rs).

use std::path::Path;
use std::time::Duration;

use deeprecall::access::{KeyEntry, Scope};
use deeprecall::api::{DeepRecallClient, pb};
use deeprecall::cli::{ClientTls, ServerClient, connect_with, wait_until_serving_with};
use deeprecall::config::{ClientAuth, Config};
use deeprecall::secret::Secret;
use deeprecall::server;
use rustls::pki_types::pem::PemObject;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tonic::Code;

use crate::common::{
    KilledOnDrop, document, free_port, hang_up, question, sample, scrape_metrics,
    spawn_binary_logging, stream_result,
};
use crate::tls_harness::{Authority, Files, Issued, TlsServer};

/// Adds one document and runs one query over `client`; the status of the first failure.
async fn add_and_ask(client: &mut ServerClient) -> Result<pb::QueryResult, tonic::Status> {
    client
        .add_documents(pb::AddDocumentsRequest {
            collection: String::new(),
            documents: vec![document(
                "tls",
                "Travel to the Helsinki conference is reimbursed by the events team.",
                serde_json::json!({}),
            )],
        })
        .await?;
    ask(client).await
}

async fn ask(client: &mut ServerClient) -> Result<pb::QueryResult, tonic::Status> {
    let stream = client
        .query(question("Who reimburses travel to the conference?"))
        .await?
        .into_inner();
    Ok(stream_result(stream).await)
}

/// An HTTPS client trusting `ca`, presenting `identity`.
fn https(ca: &Authority, identity: Option<&Issued>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem.as_bytes()).expect("CA"));
    if let Some(issued) = identity {
        let pem = format!("{}{}", issued.cert, issued.key);
        builder = builder.identity(reqwest::Identity::from_pem(pem.as_bytes()).expect("identity"));
    }
    builder.build().expect("client")
}

#[tokio::test]
async fn grpc_http_and_metrics_speak_tls_and_plaintext_gets_no_answer() {
    let ca = Authority::new("test CA");
    let files = Files::new();
    files.serve(&ca.server());
    let trust = files.client(&ca, None);
    let http_port = free_port();
    let metrics_port = free_port();
    let server = TlsServer::start(&files, &trust, |config| {
        config.server.http_listen = format!("127.0.0.1:{http_port}");
        config.telemetry.metrics_listen = format!("127.0.0.1:{metrics_port}");
        config.tls.metrics = true;
    })
    .await;

    let mut client = server.client(&trust).await.expect("connects over TLS");
    let result = add_and_ask(&mut client).await.expect("calls over TLS");
    assert!(!result.answer.is_empty());

    // A client that trusts another CA refuses the server's certificate.
    let stranger = files.client(&Authority::new("another CA"), None);
    let refused = match server.client(&stranger).await {
        Err(error) => error.to_string(),
        Ok(mut client) => ask(&mut client)
            .await
            .expect_err("untrusted server")
            .to_string(),
    };
    assert!(refused.to_lowercase().contains("certificate"), "{refused}");

    // Plaintext on the TLS port gets no gRPC answer.
    let plain = server.endpoint.replace("https://", "http://");
    let plain_call = async {
        let mut client = DeepRecallClient::connect(plain).await.ok()?;
        client.get_stats(pb::GetStatsRequest {}).await.ok()
    };
    assert!(plain_call.await.is_none(), "plaintext was answered");

    // The HTTP API and the metrics port, over TLS.
    let https_client = https(&ca, None);
    let live = https_client
        .get(format!("https://localhost:{http_port}/livez"))
        .send()
        .await
        .expect("HTTPS answered");
    assert_eq!(live.status(), 200);
    let scraped = https_client
        .get(format!("https://localhost:{metrics_port}/metrics"))
        .send()
        .await
        .expect("metrics over HTTPS")
        .text()
        .await
        .expect("body");
    let expiry = sample(
        &scraped,
        "deeprecall_tls_certificate_expiry_timestamp_seconds",
    )
    .expect("the certificate's expiry is exported");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    assert!(expiry > now, "expiry {expiry} is not in the future");
    let plain_http = reqwest::get(format!("http://127.0.0.1:{http_port}/livez")).await;
    assert!(
        plain_http.map_or(true, |response| !response.status().is_success()),
        "plaintext HTTP was served"
    );
    server.stop().await;
}

#[tokio::test]
async fn tls_1_2_is_served_and_a_connection_that_never_starts_its_handshake_is_closed() {
    let ca = Authority::new("test CA");
    let files = Files::new();
    files.serve(&ca.server());
    let trust = files.client(&ca, None);
    let server = TlsServer::start(&files, &trust, |config| {
        config.server.handshake_timeout_seconds = 1;
    })
    .await;
    let address = server.endpoint.trim_start_matches("https://").to_string();
    let mut silent = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connects");
    let mut byte = [0u8; 1];
    // The bound only catches a connection that is never closed.
    let read = tokio::time::timeout(Duration::from_secs(30), silent.read(&mut byte))
        .await
        .expect("the server closed the silent connection");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");

    // TLS 1.2 is accepted, with HTTP/2 agreed in the handshake; nothing older is offered.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca.pem.as_bytes()).expect("CA"))
        .expect("root");
    let mut tls12 =
        rustls::ClientConfig::builder_with_protocol_versions(&[&rustls::version::TLS12])
            .with_root_certificates(roots)
            .with_no_client_auth();
    tls12.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connects");
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls12))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").expect("name"),
            tcp,
        )
        .await
        .expect("a TLS 1.2 handshake");
    let (_, session) = stream.get_ref();
    assert_eq!(
        session.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]));

    // And it still answers.
    let mut client = server.client(&trust).await.expect("connects");
    client
        .get_stats(pb::GetStatsRequest {})
        .await
        .expect("answered");
    server.stop().await;
}

fn subject_entry(name: &str, subject: &str, scopes: Vec<Scope>) -> KeyEntry {
    KeyEntry {
        name: name.into(),
        key: Secret::default(),
        sha256: None,
        subject: Some(subject.into()),
        scopes,
        collections: None,
        requests_per_minute: None,
        burst: None,
    }
}

const WRITER_KEY: &str = "writer-key-0123456789";

#[tokio::test]
async fn mutual_tls_refuses_unsigned_clients_and_the_subject_names_the_caller() {
    let ca = Authority::new("test CA");
    let files = Files::new();
    files.serve(&ca.server());
    files.write("clients.crt", &ca.pem);
    let reader = ca.client("reader");
    let stranger = ca.client("stranger");
    let http_port = free_port();
    let reader_tls = files.client(&ca, Some(("reader", &reader)));
    let server = TlsServer::start(&files, &reader_tls, |config| {
        config.tls.client_ca = Some(files.path("clients.crt"));
        config.server.http_listen = format!("127.0.0.1:{http_port}");
        config.auth.keys = vec![
            subject_entry("reader", "CN=reader, O=Example", vec![Scope::Query]),
            KeyEntry {
                key: Secret::new(WRITER_KEY),
                subject: None,
                ..subject_entry("writer", "", vec![Scope::Write])
            },
        ];
    })
    .await;

    // A certificate the key file does not list, with a key: the key decides.
    let stranger_tls = files.client(&ca, Some(("stranger", &stranger)));
    let mut keyed = connect_with(&server.endpoint, Some(WRITER_KEY), &stranger_tls)
        .await
        .expect("connects");
    keyed
        .add_documents(pb::AddDocumentsRequest {
            collection: String::new(),
            documents: vec![document(
                "k",
                "Travel to the conference is reimbursed by the events team.",
                serde_json::json!({}),
            )],
        })
        .await
        .expect("the key writes");

    // The reader's certificate names it: it may query, not write.
    let mut client = server.client(&reader_tls).await.expect("connects");
    ask(&mut client).await.expect("the reader queries");
    let denied = add_and_ask(&mut client)
        .await
        .expect_err("the reader may not write");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(
        denied.message().contains("\"reader\""),
        "{}",
        denied.message()
    );

    // The same certificate without a key.
    let mut client = server.client(&stranger_tls).await.expect("connects");
    let unknown = ask(&mut client).await.expect_err("unlisted subject");
    assert_eq!(unknown.code(), Code::Unauthenticated, "{unknown:?}");
    assert!(
        unknown.message().contains("CN=stranger"),
        "{}",
        unknown.message()
    );

    // No certificate, or one from another CA: no call gets through.
    for (label, tls) in [
        ("no certificate", files.client(&ca, None)),
        (
            "another CA's certificate",
            files.client(
                &ca,
                Some(("forged", &Authority::new("forger").client("reader"))),
            ),
        ),
    ] {
        // Refused in the handshake: no call reaches the key check to be refused there.
        match server.client(&tls).await {
            Err(_) => {}
            Ok(mut client) => {
                let status = ask(&mut client).await.expect_err(label);
                assert!(
                    !matches!(
                        status.code(),
                        Code::Unauthenticated | Code::PermissionDenied
                    ),
                    "{label}: the handshake let it in: {status:?}"
                );
            }
        }
    }

    // The HTTP API reads the same subject.
    let models = https(&ca, Some(&reader))
        .get(format!("https://localhost:{http_port}/v1/models"))
        .send()
        .await
        .expect("HTTPS with a client certificate");
    assert_eq!(models.status(), 200);
    let refused = https(&ca, Some(&stranger))
        .get(format!("https://localhost:{http_port}/v1/models"))
        .send()
        .await
        .expect("answered");
    assert_eq!(refused.status(), 401);
    server.stop().await;
}

#[tokio::test]
async fn optional_client_certificates_let_keyed_clients_in_without_one() {
    let ca = Authority::new("test CA");
    let files = Files::new();
    files.serve(&ca.server());
    files.write("clients.crt", &ca.pem);
    let reader = ca.client("reader");
    let reader_tls = files.client(&ca, Some(("reader", &reader)));
    let server = TlsServer::start(&files, &reader_tls, |config| {
        config.tls.client_ca = Some(files.path("clients.crt"));
        config.tls.client_auth = ClientAuth::Optional;
        config.auth.keys = vec![
            subject_entry("reader", "CN=reader,O=Example", vec![Scope::Query]),
            KeyEntry {
                key: Secret::new(WRITER_KEY),
                subject: None,
                ..subject_entry("writer", "", vec![Scope::Write, Scope::Query])
            },
        ];
    })
    .await;
    let bare = files.client(&ca, None);
    let mut keyed = connect_with(&server.endpoint, Some(WRITER_KEY), &bare)
        .await
        .expect("connects without a certificate");
    add_and_ask(&mut keyed).await.expect("the key is enough");
    let mut anonymous = server.client(&bare).await.expect("connects");
    let missing = ask(&mut anonymous)
        .await
        .expect_err("neither key nor certificate");
    assert_eq!(missing.code(), Code::Unauthenticated);
    let mut certified = server.client(&reader_tls).await.expect("connects");
    ask(&mut certified)
        .await
        .expect("the certificate is enough");
    server.stop().await;
}

/// Waits until a new connection trusting only `tls`'s CA gets an answer: the rotation has
/// reached new connections. The bound only catches a reload that never happens.
async fn until_served_with(server: &TlsServer, tls: &ClientTls) {
    let served = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Ok(mut client) = server.client(tls).await
                && client.get_stats(pb::GetStatsRequest {}).await.is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    served.expect("the rotated certificate was never served");
}

#[tokio::test]
async fn a_rotated_certificate_reaches_new_connections_and_spares_open_ones() {
    let old_ca = Authority::new("old CA");
    let new_ca = Authority::new("new CA");
    let files = Files::new();
    files.serve(&old_ca.server());
    let old_trust = files.client(&old_ca, None);
    let new_trust = files.client(&new_ca, None);
    let metrics_port = free_port();
    let server = TlsServer::start(&files, &old_trust, |config| {
        config.tls.reload_interval_seconds = 1;
        config.telemetry.metrics_listen = format!("127.0.0.1:{metrics_port}");
    })
    .await;
    let mut open = server.client(&old_trust).await.expect("connects");
    add_and_ask(&mut open).await.expect("answered");

    files.serve(&new_ca.server());
    until_served_with(&server, &new_trust).await;
    // The connection opened before the rotation carries on with its session.
    ask(&mut open)
        .await
        .expect("the open connection still answers");
    // New connections get the new certificate only.
    let outcome = match server.client(&old_trust).await {
        Err(_) => false,
        Ok(mut client) => ask(&mut client).await.is_ok(),
    };
    assert!(!outcome, "a new connection got the old certificate");
    let scraped = scrape_metrics(metrics_port).await;
    assert_eq!(
        sample(
            &scraped,
            r#"deeprecall_tls_reloads_total{outcome="changed"}"#
        ),
        Some(1.0),
        "{scraped}"
    );
    server.stop().await;
}

#[tokio::test]
async fn sighup_reloads_the_certificate_and_a_broken_one_keeps_the_old() {
    use std::process::Command;

    let first = Authority::new("first CA");
    let second = Authority::new("second CA");
    let files = Files::new();
    files.serve(&first.server());
    let data = tempfile::tempdir().expect("data directory");
    let cert = files.path("server.crt");
    let key = files.path("server.key");
    let (child, endpoint, mut log) = spawn_binary_logging(
        data.path(),
        &["--tls-cert", path_text(&cert), "--tls-key", path_text(&key)],
        &[("DEEPRECALL_TLS__RELOAD_INTERVAL_SECONDS", "0")],
    );
    // Killed however the test ends, a failed assertion included.
    let child = KilledOnDrop(child);
    let endpoint = endpoint.replace("http://", "https://");
    let first_trust = files.client(&first, None);
    let second_trust = files.client(&second, None);
    wait_until_serving_with(&endpoint, &first_trust, Duration::from_secs(20))
        .await
        .expect("serves over TLS");

    // `deeprecall health` speaks TLS with the CA given, and fails without it.
    let health = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_deeprecall"))
            .args(["health", "--server", &endpoint])
            .args(extra)
            .env_remove("DEEPRECALL_TLS_CA")
            .output()
            .expect("health runs")
    };
    let ca_path = first_trust.ca.clone().expect("CA file");
    assert!(health(&["--tls-ca", path_text(&ca_path)]).status.success());
    let untrusted = health(&[]);
    assert!(!untrusted.status.success());
    let said = String::from_utf8_lossy(&untrusted.stderr).to_lowercase();
    assert!(
        said.contains("certificate") || said.contains("tls"),
        "{said}"
    );

    files.serve(&second.server());
    hang_up(&child);
    log.wait_for("TLS certificate reloaded").await;
    let mut client = connect_with(&endpoint, None, &second_trust)
        .await
        .expect("the new certificate is served");
    client
        .get_stats(pb::GetStatsRequest {})
        .await
        .expect("answered");

    // A key that does not match the certificate keeps the certificate in force.
    let stray = second.server();
    files.write("server.key", &stray.key);
    hang_up(&child);
    log.wait_for("TLS files not reloaded").await;
    let mut client = connect_with(&endpoint, None, &second_trust)
        .await
        .expect("the certificate in force stays");
    client
        .get_stats(pb::GetStatsRequest {})
        .await
        .expect("answered");
}

#[tokio::test]
async fn the_cli_presents_a_client_certificate_under_mutual_tls() {
    let ca = Authority::new("test CA");
    let files = Files::new();
    files.serve(&ca.server());
    files.write("clients.crt", &ca.pem);
    let operator = ca.client("operator");
    let operator_tls = files.client(&ca, Some(("operator", &operator)));
    let server = TlsServer::start(&files, &operator_tls, |config| {
        config.tls.client_ca = Some(files.path("clients.crt"));
    })
    .await;
    let endpoint = server.endpoint.clone();
    let ca_path = operator_tls.ca.clone().expect("CA");
    let cert = operator_tls.cert.clone().expect("cert");
    let key = operator_tls.key.clone().expect("key");
    // The server runs on this test's thread: the CLI is waited for off it.
    let cli = |args: Vec<String>| async move {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_deeprecall"))
                .args(args)
                .env_remove("DEEPRECALL_TLS_CLIENT_CERT")
                .env_remove("DEEPRECALL_TLS_CLIENT_KEY")
                .output()
                .expect("the CLI runs")
        })
        .await
        .expect("the CLI task")
    };
    let text = |path: &Path| path.display().to_string();
    let base = vec![
        "--server".to_string(),
        endpoint.clone(),
        "--tls-ca".into(),
        text(&ca_path),
    ];
    let with_identity = [
        base.clone(),
        vec![
            "--tls-client-cert".into(),
            text(&cert),
            "--tls-client-key".into(),
            text(&key),
        ],
    ]
    .concat();
    let health = cli([vec!["health".to_string()], with_identity.clone()].concat()).await;
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );
    let stats = cli([vec!["stats".to_string()], with_identity].concat()).await;
    assert!(
        stats.status.success(),
        "{}",
        String::from_utf8_lossy(&stats.stderr)
    );
    let bare = cli([vec!["stats".to_string()], base.clone()].concat()).await;
    assert!(
        !bare.status.success(),
        "answered without a client certificate"
    );
    let half = cli([
        vec!["stats".to_string()],
        base,
        vec!["--tls-client-cert".into(), text(&cert)],
    ]
    .concat())
    .await;
    assert!(!half.status.success());
    assert!(
        String::from_utf8_lossy(&half.stderr).contains("--tls-client-key"),
        "{}",
        String::from_utf8_lossy(&half.stderr)
    );
    let plaintext = cli(vec![
        "stats".into(),
        "--server".into(),
        endpoint.replace("https://", "http://"),
        "--tls-ca".into(),
        text(&ca_path),
    ])
    .await;
    assert!(
        String::from_utf8_lossy(&plaintext.stderr).contains("https://"),
        "{}",
        String::from_utf8_lossy(&plaintext.stderr)
    );
    server.stop().await;
}

#[tokio::test]
async fn half_a_tls_configuration_or_unreadable_files_stop_the_start() {
    let ca = Authority::new("test CA");
    let files = Files::new();
    let issued = ca.server();
    files.serve(&issued);
    let other = ca.server();
    files.write("other.key", &other.key);
    files.write("garbage.crt", "not a certificate");
    type Change<'a> = Box<dyn Fn(&mut Config) + 'a>;
    let cases: Vec<(&str, Change)> = vec![
        ("tls.key", Box::new(|config| config.tls.key = None)),
        ("tls.cert", Box::new(|config| config.tls.cert = None)),
        (
            "does not belong",
            Box::new(|config| config.tls.key = Some(files.path("other.key"))),
        ),
        (
            "garbage.crt",
            Box::new(|config| config.tls.cert = Some(files.path("garbage.crt"))),
        ),
        (
            "missing.crt",
            Box::new(|config| config.tls.client_ca = Some(files.path("missing.crt"))),
        ),
    ];
    for (named, configure) in cases {
        let data = tempfile::tempdir().expect("data directory");
        let mut config = Config::default();
        config.store.data_dir = data.path().to_path_buf();
        config.tls.cert = Some(files.path("server.crt"));
        config.tls.key = Some(files.path("server.key"));
        configure(&mut config);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let outcome = tokio::time::timeout(
            Duration::from_secs(20),
            server::serve(config, listener, std::future::pending()),
        )
        .await
        .expect("refused at once");
        let error = outcome.expect_err("started with a broken TLS configuration");
        assert!(error.to_string().contains(named), "{named}: {error}");
    }
}

fn path_text(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}
