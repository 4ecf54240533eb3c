use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

#[test]
fn the_init_template_is_exactly_the_defaults() {
    let parsed: Config = toml::from_str(DEFAULT_CONFIG_TOML).unwrap();
    assert_eq!(parsed, Config::default());
}

#[test]
fn flags_override_env_which_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deeprecall.toml");
    std::fs::write(
        &file,
        "[server]\nlisten = \"127.0.0.1:1\"\n[engine]\nmax_top_k = 7\ndefault_top_k = 3\n",
    )
    .unwrap();
    let sources = ConfigSources {
        file: Some(file),
        env: env(&[
            ("DEEPRECALL_LISTEN", "127.0.0.1:2"),
            ("DEEPRECALL_ENGINE__MAX_TOP_K", "9"),
            ("DEEPRECALL_ENGINE__MAX_COST_USD", "0.25"),
        ]),
        flags: vec![("server.listen".into(), "127.0.0.1:3".into())],
    };
    let config = Config::load(&sources).unwrap();
    assert_eq!(config.server.listen.port(), 3);
    assert_eq!(config.engine.max_top_k, 9);
    assert_eq!(config.engine.default_top_k, 3);
    assert_eq!(config.engine.max_cost_usd, Some(0.25));
}

#[test]
fn the_postgres_store_is_chosen_by_file_env_or_flags_and_its_secrets_never_print() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deeprecall.toml");
    std::fs::write(
        &file,
        "[store]\nbackend = \"postgres\"\nsslmode = \"verify-full\"\npool_size = 4\n",
    )
    .unwrap();
    let sources = ConfigSources {
        file: Some(file.clone()),
        env: env(&[
            (
                "DEEPRECALL_DATABASE_URL",
                "postgres://app:hunter2@db:5432/recall",
            ),
            ("DEEPRECALL_DATABASE_PASSWORD_FILE", "/run/secrets/pw"),
            ("DEEPRECALL_STORE__STATEMENT_TIMEOUT_SECONDS", "2.5"),
            ("PGPASSWORD", "from-libpq-env"),
            ("PGHOST", "db.internal"),
        ]),
        flags: Vec::new(),
    };
    let config = Config::load(&sources).unwrap();
    let store = &config.store;
    assert_eq!(store.backend, StoreBackend::Postgres);
    assert_eq!(store.sslmode, SslMode::VerifyFull);
    assert_eq!(store.pool_size, 4);
    assert_eq!(store.statement_timeout_seconds, 2.5);
    assert_eq!(
        store.database_url.expose(),
        "postgres://app:hunter2@db:5432/recall"
    );
    assert_eq!(
        store.database_password_file.as_deref(),
        Some(Path::new("/run/secrets/pw"))
    );
    assert_eq!(store.libpq_env["PGHOST"].expose(), "db.internal");
    let printed = format!("{config:?}");
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(!printed.contains("from-libpq-env"), "{printed}");

    let flagged = ConfigSources {
        file: Some(file),
        env: env(&[("DEEPRECALL_STORE", "embedded")]),
        flags: vec![
            ("store.backend".into(), "postgres".into()),
            ("store.database_url".into(), "postgres://flag@h/d".into()),
        ],
    };
    let config = Config::load(&flagged).unwrap();
    assert_eq!(config.store.backend, StoreBackend::Postgres);
    assert_eq!(config.store.database_url.expose(), "postgres://flag@h/d");
    let only_env = ConfigSources {
        env: env(&[("DEEPRECALL_STORE", "postgres")]),
        ..ConfigSources::default()
    };
    assert_eq!(
        Config::load(&only_env).unwrap().store.backend,
        StoreBackend::Postgres
    );
    let wrong = ConfigSources {
        env: env(&[("DEEPRECALL_STORE", "mysql")]),
        ..ConfigSources::default()
    };
    assert!(Config::load(&wrong).is_err());
}

#[test]
fn keys_and_shared_redis_come_from_the_environment() {
    let sources = ConfigSources {
        env: env(&[
            (
                "DEEPRECALL_AUTH__KEYS",
                r#"[{name = "ci", key = "ci-key-0123456789abc", scopes = ["query"]}]"#,
            ),
            ("DEEPRECALL_REDIS_URL", "redis://redis.internal:6379/2"),
            ("DEEPRECALL_KEYS_FILE", "/etc/deeprecall/keys.toml"),
        ]),
        ..ConfigSources::default()
    };
    let config = Config::load(&sources).unwrap();
    assert_eq!(config.auth.keys.len(), 1);
    assert_eq!(config.auth.keys[0].name, "ci");
    assert_eq!(config.cache.redis_url, "redis://redis.internal:6379/2");
    assert_eq!(config.limits.redis_url, "redis://redis.internal:6379/2");
    assert_eq!(
        config.auth.keys_file,
        Some(PathBuf::from("/etc/deeprecall/keys.toml"))
    );
}

#[test]
fn the_config_file_can_come_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "[store]\ndata_dir = \"/srv/recall\"\n").unwrap();
    let sources = ConfigSources {
        env: env(&[("DEEPRECALL_CONFIG", file.to_str().unwrap())]),
        ..ConfigSources::default()
    };
    assert_eq!(
        Config::load(&sources).unwrap().store.data_dir,
        PathBuf::from("/srv/recall")
    );
}

#[test]
fn otlp_headers_come_from_the_file_and_never_show() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "[telemetry.otlp_headers]\n\"x-api-key\" = \"vendor-key-123\"\n",
    )
    .unwrap();
    let sources = ConfigSources {
        file: Some(file),
        env: env(&[("DEEPRECALL_RATE_LIMIT_FALLBACK_REPLICAS", "3")]),
        ..ConfigSources::default()
    };
    let config = Config::load(&sources).unwrap();
    assert_eq!(
        config.telemetry.otlp_headers["x-api-key"].expose(),
        "vendor-key-123"
    );
    assert!(!format!("{config:?}").contains("vendor-key-123"));
    assert_eq!(config.limits.fallback_replicas, 3);
}

#[test]
fn a_server_address_without_a_scheme_is_plaintext() {
    let none = HashMap::new();
    assert_eq!(
        server_endpoint(Some("127.0.0.1:50051"), &none),
        "http://127.0.0.1:50051"
    );
    assert_eq!(
        server_endpoint(Some(" localhost:50051 "), &none),
        "http://localhost:50051"
    );
    assert_eq!(
        server_endpoint(Some("https://recall.example:443"), &none),
        "https://recall.example:443"
    );
    let from_env = env(&[(SERVER_ENV, "[::1]:9000")]);
    assert_eq!(server_endpoint(None, &from_env), "http://[::1]:9000");
    assert_eq!(server_endpoint(None, &none), DEFAULT_SERVER);
}

#[test]
fn wrong_types_and_unknown_names_are_reported() {
    let bad_number = ConfigSources {
        env: env(&[("DEEPRECALL_ENGINE__MAX_TOP_K", "many")]),
        ..ConfigSources::default()
    };
    let error = Config::load(&bad_number).unwrap_err().to_string();
    assert!(
        error.contains("engine.max_top_k must be a whole number"),
        "{error}"
    );

    let unknown = ConfigSources {
        env: env(&[("DEEPRECALL_ENGINE__MAX_TOPK", "3")]),
        ..ConfigSources::default()
    };
    let error = Config::load(&unknown).unwrap_err().to_string();
    assert!(error.contains("max_topk"), "{error}");

    let bad_backend = ConfigSources {
        flags: vec![("cache.backend".into(), "floppy".into())],
        ..ConfigSources::default()
    };
    assert!(Config::load(&bad_backend).is_err());
}

#[test]
fn huge_pages_are_asked_for_with_the_values_mimalloc_reads_as_true() {
    for yes in ["1", "true", "ON", " yes "] {
        assert!(super::is_true(yes), "{yes:?}");
    }
    for no in ["0", "false", "off", "", "2"] {
        assert!(!super::is_true(no), "{no:?}");
    }
}
