//! Crash safety: the real binary killed with SIGKILL under concurrent writes, and a disk
//! that fills up under it.
//!
//! The crash loop runs seeded (`DEEPRECALL_CRASH_SEED` repeats a run; the seed is printed).
//! Each round starts the server on the same data directory, lets several clients add and
//! delete documents while another fills the SQLite cache with queries, and kills the server
//! after a random number of acknowledged writes. After the restart, every write that was
//! acknowledged must be there (an acknowledged delete gone), findable by a search, the counts
//! must agree, and SQLite's `integrity_check` must pass on the store and on both cache files.
//! A write in flight at the kill may have landed or not, but nothing else.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use deeprecall::api::{DeepRecallClient, pb};
use serde_json::json;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::common::*;

/// Server lifetimes, each ended by SIGKILL.
const ROUNDS: usize = 25;
/// Clients writing at once, each in its own ids.
const WRITERS: usize = 3;
/// Most acknowledged writes before a kill.
const MOST_ACKS_BEFORE_KILL: usize = 24;
const COLLECTION: &str = "crash";
/// Bounds every wait of the test; only a hang reaches it.
const PATIENCE: Duration = Duration::from_secs(30);

/// What a document id should hold.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    Present(String),
    Absent,
}

/// One write call: documents added (id, content) or ids deleted.
#[derive(Debug, Clone)]
enum Write {
    Add(Vec<(String, String)>),
    Delete(Vec<String>),
}

impl Write {
    /// What each id of the write holds once the write is applied.
    fn outcome(&self) -> Vec<(String, Expected)> {
        match self {
            Write::Add(documents) => documents
                .iter()
                .map(|(id, content)| (id.clone(), Expected::Present(content.clone())))
                .collect(),
            Write::Delete(ids) => ids
                .iter()
                .map(|id| (id.clone(), Expected::Absent))
                .collect(),
        }
    }
}

/// What the test knows of the collection: the state of every id written, and the ids of
/// the writes that were in flight when the server died, which may hold either state.
#[derive(Debug, Default)]
struct Ledger {
    ids: BTreeMap<String, Expected>,
    in_doubt: BTreeMap<String, Vec<Expected>>,
}

impl Ledger {
    fn acknowledge(&mut self, write: &Write) {
        for (id, expected) in write.outcome() {
            self.ids.insert(id, expected);
        }
    }

    fn unanswered(&mut self, write: &Write) {
        for (id, after) in write.outcome() {
            let before = self.ids.get(&id).cloned().unwrap_or(Expected::Absent);
            self.in_doubt.insert(id, vec![before, after]);
        }
    }

    fn present_of(&self, writer: usize) -> Vec<String> {
        let prefix = format!("w{writer}-");
        self.ids
            .iter()
            .filter(|(id, expected)| {
                id.starts_with(&prefix) && matches!(expected, Expected::Present(_))
            })
            .map(|(id, _)| id.clone())
            .collect()
    }
}

fn document_of(id: &str, content: &str) -> pb::Document {
    document(id, content, json!({ "doc": id }))
}

/// Writes until a call fails, reporting each acknowledged write; returns the write that got
/// no answer.
async fn writer(
    mut client: DeepRecallClient<Channel>,
    writer: usize,
    mut present: Vec<String>,
    mut rng: fastrand::Rng,
    acknowledged: mpsc::UnboundedSender<Write>,
) -> Option<Write> {
    let mut revision = 0u64;
    loop {
        let write = if !present.is_empty() && rng.u8(..3) == 0 {
            let count = rng.usize(1..=3).min(present.len());
            let ids = (0..count)
                .map(|_| present.swap_remove(rng.usize(..present.len())))
                .collect();
            Write::Delete(ids)
        } else {
            let documents = (0..rng.usize(1..=4))
                .map(|_| {
                    revision += 1;
                    // A new id, or a replacement of one this writer holds.
                    let id = if !present.is_empty() && rng.bool() {
                        present[rng.usize(..present.len())].clone()
                    } else {
                        format!("w{writer}-{}", rng.u32(..100_000))
                    };
                    let content = format!(
                        "Ledger entry {id} at revision {revision} records {} crates of quartz.",
                        rng.u32(..1_000)
                    );
                    (id, content)
                })
                .collect::<BTreeMap<_, _>>()
                .into_iter()
                .collect();
            Write::Add(documents)
        };
        let call = async {
            match &write {
                Write::Add(documents) => client
                    .add_documents(pb::AddDocumentsRequest {
                        collection: COLLECTION.into(),
                        documents: documents
                            .iter()
                            .map(|(id, content)| document_of(id, content))
                            .collect(),
                    })
                    .await
                    .map(drop),
                Write::Delete(ids) => client
                    .delete_documents(pb::DeleteDocumentsRequest {
                        collection: COLLECTION.into(),
                        ids: ids.clone(),
                    })
                    .await
                    .map(drop),
            }
        };
        match tokio::time::timeout(PATIENCE, call).await {
            Ok(Ok(())) => {
                if let Write::Add(documents) = &write {
                    for (id, _) in documents {
                        if !present.contains(id) {
                            present.push(id.clone());
                        }
                    }
                }
                if acknowledged.send(write).is_err() {
                    return None;
                }
            }
            Ok(Err(_)) | Err(_) => return Some(write),
        }
    }
}

/// Asks questions, each new, so that the SQLite cache keeps writing, until a call fails.
async fn asker(mut client: DeepRecallClient<Channel>) {
    for n in 0.. {
        let mut request = question(&format!("How many crates of quartz, take {n}?"));
        request.collection = COLLECTION.into();
        let asked = async {
            let mut stream = client.query(request).await?.into_inner();
            while stream.message().await?.is_some() {}
            Ok::<(), tonic::Status>(())
        };
        if !matches!(tokio::time::timeout(PATIENCE, asked).await, Ok(Ok(()))) {
            return;
        }
    }
}

fn integrity_check(path: &Path) {
    let connection = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .unwrap_or_else(|error| panic!("cannot open {}: {error}", path.display()));
    connection.busy_timeout(PATIENCE).expect("busy timeout set");
    let verdict: Vec<String> = connection
        .prepare("PRAGMA integrity_check")
        .and_then(|mut statement| {
            statement
                .query_map([], |row| row.get(0))?
                .collect::<Result<Vec<String>, _>>()
        })
        .unwrap_or_else(|error| panic!("integrity_check on {}: {error}", path.display()));
    assert_eq!(verdict, vec!["ok".to_string()], "{}", path.display());
}

/// Checks the restarted server against the ledger, settling the writes in doubt by what the
/// server holds.
async fn verify(client: &mut DeepRecallClient<Channel>, ledger: &mut Ledger, round: usize) {
    let ids: Vec<String> = ledger
        .ids
        .keys()
        .chain(ledger.in_doubt.keys())
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let found = client
        .get_documents(pb::GetDocumentsRequest {
            collection: COLLECTION.into(),
            ids,
        })
        .await
        .expect("documents read back")
        .into_inner();
    let mut held: BTreeMap<String, Expected> = found
        .documents
        .into_iter()
        .map(|document| (document.id, Expected::Present(document.content)))
        .collect();
    for id in found.missing_ids {
        held.insert(id, Expected::Absent);
    }
    for (id, states) in std::mem::take(&mut ledger.in_doubt) {
        let actual = held[&id].clone();
        assert!(
            states.contains(&actual),
            "round {round}: {id} holds {actual:?}, neither its state before nor after the unanswered write {states:?}"
        );
        ledger.ids.insert(id, actual);
    }
    for (id, expected) in &ledger.ids {
        assert_eq!(
            &held[id], expected,
            "round {round}: {id} after an acknowledged write"
        );
    }

    let present: Vec<&String> = ledger
        .ids
        .iter()
        .filter(|(_, expected)| matches!(expected, Expected::Present(_)))
        .map(|(id, _)| id)
        .collect();
    let count = documents_counted(client).await;
    assert_eq!(count, present.len() as u64, "round {round}: document count");

    // Searchable: each present document is found when the search is scoped to it, and
    // deleted ones are not. A few per round keep the loop quick; over the rounds most are.
    let mut rng = fastrand::Rng::with_seed(round as u64);
    let mut sampled: Vec<(&String, &Expected)> = ledger.ids.iter().collect();
    rng.shuffle(&mut sampled);
    for (id, expected) in sampled.into_iter().take(4) {
        let mut request = question(match expected {
            Expected::Present(content) => content,
            Expected::Absent => "Ledger entry crates of quartz",
        });
        request.collection = COLLECTION.into();
        request.skip_cache = true;
        request.filters = Some(structure(json!({ "doc": id })));
        let result = tokio::time::timeout(PATIENCE, query_result(client, request))
            .await
            .expect("the query answers");
        let found = result.sources.iter().any(|source| &source.id == id);
        assert_eq!(
            found,
            matches!(expected, Expected::Present(_)),
            "round {round}: a search for {id} ({expected:?}) found {:?}",
            result.sources
        );
    }
}

fn check_files(data_dir: &Path, cache: &Path) {
    integrity_check(&data_dir.join(deeprecall::store::embedded::DATABASE_FILE));
    integrity_check(cache);
    let mut search_cache = cache.as_os_str().to_owned();
    search_cache.push("-search");
    integrity_check(Path::new(&search_cache));
}

async fn start(data_dir: &Path, cache: &Path) -> (std::process::Child, DeepRecallClient<Channel>) {
    let cache = cache.display().to_string();
    let (child, endpoint) = spawn_binary(data_dir, &["--cache", "sqlite", "--cache-path", &cache]);
    wait_until_serving(&endpoint).await;
    let client = DeepRecallClient::connect(endpoint)
        .await
        .expect("client connects");
    (child, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_and_deletes_survive_kill_dash_nine_at_random_moments() {
    let seed = std::env::var("DEEPRECALL_CRASH_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    println!("crash loop seed {seed} (DEEPRECALL_CRASH_SEED={seed} repeats it)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let cache = data_dir.path().join("cache.db");
    let mut ledger = Ledger::default();
    let mut kills_with_writes_in_flight = 0;

    for round in 0..ROUNDS {
        let (mut child, mut client) = start(data_dir.path(), &cache).await;
        if round > 0 {
            verify(&mut client, &mut ledger, round).await;
            check_files(data_dir.path(), &cache);
        }

        let (acknowledged, mut acks) = mpsc::unbounded_channel();
        let writers: Vec<_> = (0..WRITERS)
            .map(|n| {
                tokio::spawn(writer(
                    client.clone(),
                    n,
                    ledger.present_of(n),
                    rng.fork(),
                    acknowledged.clone(),
                ))
            })
            .collect();
        drop(acknowledged);
        let asking = tokio::spawn(asker(client.clone()));

        let kill_after = rng.usize(1..=MOST_ACKS_BEFORE_KILL);
        for _ in 0..kill_after {
            let write = tokio::time::timeout(PATIENCE, acks.recv())
                .await
                .expect("writes are acknowledged")
                .expect("writers keep writing while the server lives");
            ledger.acknowledge(&write);
        }
        child.kill().expect("SIGKILL");
        child.wait().expect("reaped");

        let mut unanswered = Vec::new();
        for writer in writers {
            let write = tokio::time::timeout(PATIENCE, writer)
                .await
                .expect("a writer notices the kill")
                .expect("the writer ran");
            unanswered.extend(write);
        }
        // Answers that reached a client before the kill count too; each writer's came before
        // its unanswered write, so they go into the ledger first.
        while let Ok(write) = acks.try_recv() {
            ledger.acknowledge(&write);
        }
        kills_with_writes_in_flight += usize::from(!unanswered.is_empty());
        for write in &unanswered {
            ledger.unanswered(write);
        }
        tokio::time::timeout(PATIENCE, asking)
            .await
            .expect("the asker notices the kill")
            .expect("the asker ran");
    }

    let (mut child, mut client) = start(data_dir.path(), &cache).await;
    verify(&mut client, &mut ledger, ROUNDS).await;
    check_files(data_dir.path(), &cache);
    child.kill().expect("stopped");
    child.wait().expect("reaped");
    println!(
        "{ROUNDS} kills, {kills_with_writes_in_flight} of them with writes in flight, {} ids written",
        ledger.ids.len()
    );
    assert!(
        kills_with_writes_in_flight > 0,
        "no kill ever caught a write in flight: the loop tests nothing but clean stops"
    );
}

/// Starts the binary under `prlimit --fsize`, so that no file it writes may grow past
/// `limit` bytes, and returns it with its endpoint.
/// The documents GetStats counts in the test's collection.
async fn documents_counted(client: &mut DeepRecallClient<Channel>) -> u64 {
    let stats = client
        .get_stats(pb::GetStatsRequest {})
        .await
        .expect("stats")
        .into_inner();
    stats
        .collections
        .iter()
        .find(|collection| collection.name == COLLECTION)
        .map_or(0, |collection| collection.document_count)
}

/// `prlimit` comes with util-linux.
fn spawn_with_file_size_limit(data_dir: &Path, limit: u64) -> (std::process::Child, String) {
    let mut prlimit = std::process::Command::new("prlimit");
    prlimit
        .arg(format!("--fsize={limit}"))
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_deeprecall"));
    let (child, endpoint, _log) = spawn_serving_command(prlimit, data_dir, &[], &[]);
    (child, endpoint)
}

#[tokio::test]
async fn a_write_past_a_file_size_limit_is_refused_clearly_and_what_was_stored_stays() {
    // The store's files start at well under this; a few hundred documents outgrow it.
    const LIMIT: u64 = 1 << 20;
    let data_dir = tempfile::tempdir().expect("temporary directory");
    let (mut child, endpoint) = spawn_with_file_size_limit(data_dir.path(), LIMIT);
    wait_until_serving(&endpoint).await;
    let mut client = DeepRecallClient::connect(endpoint.clone())
        .await
        .expect("client connects");

    let filler = "Quartz crates are counted twice at the northern dock. ".repeat(40);
    let mut stored = Vec::new();
    let refusal = loop {
        assert!(
            stored.len() < 10_000,
            "{} documents stored under a {LIMIT}-byte file-size limit",
            stored.len()
        );
        let batch: Vec<pb::Document> = (stored.len()..stored.len() + 20)
            .map(|n| document_of(&format!("doc-{n}"), &format!("Entry {n}. {filler}")))
            .collect();
        let ids: Vec<String> = batch.iter().map(|document| document.id.clone()).collect();
        match client
            .add_documents(pb::AddDocumentsRequest {
                collection: COLLECTION.into(),
                documents: batch,
            })
            .await
        {
            Ok(_) => stored.extend(ids),
            Err(status) => break status,
        }
    };
    assert_eq!(
        refusal.code(),
        tonic::Code::ResourceExhausted,
        "{refusal:?}"
    );
    assert!(refusal.message().contains("disk is full"), "{refusal:?}");
    assert!(!stored.is_empty(), "the first write already failed");

    // The server lives on and serves reads of everything acknowledged.
    assert!(
        child.try_wait().expect("process state").is_none(),
        "the server died at the limit"
    );
    let found = client
        .get_documents(pb::GetDocumentsRequest {
            collection: COLLECTION.into(),
            ids: stored.clone(),
        })
        .await
        .expect("reads still served")
        .into_inner();
    assert!(found.missing_ids.is_empty(), "{:?}", found.missing_ids);
    assert_eq!(found.documents.len(), stored.len());
    let mut request = question("Entry 3 quartz crates");
    request.collection = COLLECTION.into();
    request.filters = Some(structure(json!({ "doc": "doc-3" })));
    let result = query_result(&mut client, request).await;
    assert!(result.sources.iter().any(|source| source.id == "doc-3"));
    child.kill().expect("stopped");
    child.wait().expect("reaped");

    // Without the limit, the same directory holds exactly what was acknowledged.
    let (mut child, endpoint) = spawn_binary(data_dir.path(), &[]);
    wait_until_serving(&endpoint).await;
    let mut client = DeepRecallClient::connect(endpoint)
        .await
        .expect("client connects");
    let count = documents_counted(&mut client).await;
    assert_eq!(count, stored.len() as u64);
    integrity_check(
        &data_dir
            .path()
            .join(deeprecall::store::embedded::DATABASE_FILE),
    );
    child.kill().expect("stopped");
    child.wait().expect("reaped");
}
