//! Engine floor: sled 0.34.7 vs fjall (LSM) writing flowhook's per-message keys.
//! See README.md. Keys/values are exactly those of `examples/sled_floor.rs`.
//!
//! engine-floor <dir> <messages> <batch>              both engines (one child process each), fresh dirs, removed after
//! engine-floor write <sled|fjall> <path> <messages> <batch>   write and keep the store
//! engine-floor open <sled|fjall> <path> <messages>   fresh process: open, 10k random reads
//! engine-floor compact fjall <path>                  flush memtables + major compaction
//!
//! Env: FJALL_MEMTABLE_MIB (default 64, fjall's default) sets each keyspace's memtable size;
//! FJALL_NO_COMPRESSION=1 disables data-block compression (only at keyspace creation).

use sled::transaction::ConflictableTransactionError;
use sled::Transactional;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CACHE: u64 = 64 << 20;
const READS: usize = 10_000;

/// The keys of message `k`: (tree index, key, value). Same as examples/sled_floor.rs.
fn keys(k: usize) -> Vec<(usize, Vec<u8>, Vec<u8>)> {
    let id = format!("wamid.FLOOR.{k:012}");
    let mut time = (k as u64).to_be_bytes().to_vec();
    time.extend_from_slice(id.as_bytes());
    vec![
        (0, id.clone().into_bytes(), vec![7; 300]),
        (1, format!("order_id\0ORD{k}\0{id}").into_bytes(), vec![]),
        (
            1,
            format!("campaign\0newsletter\0{id}").into_bytes(),
            vec![],
        ),
        (2, format!("+919090909090\0{id}").into_bytes(), vec![]),
        (3, time, vec![]),
        (
            4,
            b"campaign\0newsletter\0messages".to_vec(),
            (k as u64).to_be_bytes().to_vec(),
        ),
    ]
}

fn record_key(k: usize) -> Vec<u8> {
    format!("wamid.FLOOR.{k:012}").into_bytes()
}

fn status(field: &str) -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .map(|l| l[field.len()..].trim().to_string())
        .unwrap_or_default()
}

/// (apparent bytes, allocated bytes) under `p`.
fn du(p: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut t = (0, 0);
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            let m = match e.metadata() {
                Ok(m) => m,
                Err(_) => continue,
            };
            if m.is_dir() {
                let (a, b) = du(&e.path());
                t.0 += a;
                t.1 += b;
            } else {
                t.0 += m.len();
                t.1 += m.blocks() * 512;
            }
        }
    }
    t
}

fn open_sled(path: &Path) -> anyhow::Result<(sled::Db, Vec<sled::Tree>)> {
    let db = sled::Config::new()
        .path(path)
        .cache_capacity(CACHE)
        .flush_every_ms(None)
        .open()?;
    let trees = (0..5)
        .map(|i| db.open_tree(format!("t{i}")))
        .collect::<Result<_, _>>()?;
    Ok((db, trees))
}

fn open_fjall(path: &Path) -> anyhow::Result<(fjall::Database, Vec<fjall::Keyspace>)> {
    let memtable: u64 = std::env::var("FJALL_MEMTABLE_MIB")
        .ok()
        .map_or(Ok(64), |v| v.parse())?;
    let no_lz4 = std::env::var_os("FJALL_NO_COMPRESSION").is_some();
    let db = fjall::Database::builder(path)
        .cache_size(CACHE)
        // we persist explicitly with SyncData per batch (see write_fjall)
        .manual_journal_persist(true)
        .open()?;
    let ks = (0..5)
        .map(|i| {
            db.keyspace(&format!("t{i}"), || {
                let o = fjall::KeyspaceCreateOptions::default().max_memtable_size(memtable << 20);
                if no_lz4 {
                    // default is no compression in L0/L1 and LZ4 from L2 down
                    o.data_block_compression_policy(fjall::config::CompressionPolicy::disabled())
                } else {
                    o
                }
            })
        })
        .collect::<Result<_, _>>()?;
    Ok((db, ks))
}

fn write_sled(path: &Path, n: usize, batch: usize) -> anyhow::Result<f64> {
    let (db, trees) = open_sled(path)?;
    let started = Instant::now();
    for first in (0..n).step_by(batch) {
        let rows: Vec<_> = (first..(first + batch).min(n)).flat_map(keys).collect();
        (&trees[0], &trees[1], &trees[2], &trees[3], &trees[4])
            .transaction(|(a, b, c, d, e)| {
                let trees = [a, b, c, d, e];
                for (t, k, v) in &rows {
                    trees[*t].insert(k.as_slice(), v.as_slice())?;
                }
                Ok::<_, ConflictableTransactionError<()>>(())
            })
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        db.flush()?;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    println!(
        "  (end of write: VmRSS {}, VmHWM {}, threads {})",
        status("VmRSS:"),
        status("VmHWM:"),
        status("Threads:")
    );
    Ok(rate)
}

fn write_fjall(path: &Path, n: usize, batch: usize) -> anyhow::Result<f64> {
    let (db, ks) = open_fjall(path)?;
    let started = Instant::now();
    for first in (0..n).step_by(batch) {
        // One atomic batch across the five keyspaces; SyncData = fdatasync of the journal
        // before commit() returns (done under the journal lock, before the memtable insert).
        let mut b = db.batch().durability(Some(fjall::PersistMode::SyncData));
        for (t, k, v) in (first..(first + batch).min(n)).flat_map(keys) {
            b.insert(&ks[t], k, v);
        }
        b.commit()?;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    println!(
        "  (end of write: VmRSS {}, VmHWM {}, threads {}, journals {}, journal bytes {})",
        status("VmRSS:"),
        status("VmHWM:"),
        status("Threads:"),
        db.journal_count(),
        db.journal_disk_space()?
    );
    Ok(rate)
}

fn write(engine: &str, path: &Path, n: usize, batch: usize) -> anyhow::Result<f64> {
    match engine {
        "sled" => write_sled(path, n, batch),
        "fjall" => write_fjall(path, n, batch),
        _ => anyhow::bail!("engine must be sled or fjall"),
    }
}

fn report_disk(path: &Path, n: usize) {
    let (app, alloc) = du(path);
    println!(
        "  disk: {:.1} MiB apparent ({:.0} B/message), {:.1} MiB allocated ({:.0} B/message)",
        app as f64 / 1048576.0,
        app as f64 / n as f64,
        alloc as f64 / 1048576.0,
        alloc as f64 / n as f64
    );
}

fn open_and_read(engine: &str, path: &Path, n: usize) -> anyhow::Result<()> {
    println!("{engine} open {} ({n} messages)", path.display());
    println!("  before open: VmRSS {}", status("VmRSS:"));
    let t = Instant::now();
    // keep handles alive until the end
    let get: Box<dyn Fn(&[u8]) -> anyhow::Result<Option<usize>>>;
    let _keep: Box<dyn std::any::Any>;
    match engine {
        "sled" => {
            let (db, trees) = open_sled(path)?;
            let t0 = trees[0].clone();
            get = Box::new(move |k| Ok(t0.get(k)?.map(|v| v.len())));
            _keep = Box::new((db, trees));
        }
        "fjall" => {
            let (db, ks) = open_fjall(path)?;
            let t0 = ks[0].clone();
            get = Box::new(move |k| Ok(t0.get(k)?.map(|v| v.len())));
            _keep = Box::new((db, ks));
        }
        _ => anyhow::bail!("engine must be sled or fjall"),
    }
    println!(
        "  after open ({:.2}s): VmRSS {}, threads {}",
        t.elapsed().as_secs_f64(),
        status("VmRSS:"),
        status("Threads:")
    );
    // xorshift64*, fixed seed
    let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
    let t = Instant::now();
    for _ in 0..READS {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        let k = (s.wrapping_mul(0x2545_F491_4F6C_DD1D) % n as u64) as usize;
        match get(&record_key(k))? {
            Some(300) => {}
            other => anyhow::bail!("message {k}: unexpected {other:?}"),
        }
    }
    let el = t.elapsed().as_secs_f64();
    println!(
        "  after {READS} random reads ({:.0} reads/s): VmRSS {}, VmHWM {}",
        READS as f64 / el,
        status("VmRSS:"),
        status("VmHWM:")
    );
    drop(get);
    drop(_keep);
    report_disk(path, n);
    Ok(())
}

fn compact_fjall(path: &Path) -> anyhow::Result<()> {
    let (db, ks) = open_fjall(path)?;
    let t = Instant::now();
    for k in &ks {
        k.rotate_memtable_and_wait()?;
        k.major_compact()?;
    }
    db.persist(fjall::PersistMode::SyncAll)?;
    println!(
        "fjall compact: {:.1}s, tables {:?}, journals {}",
        t.elapsed().as_secs_f64(),
        ks.iter().map(|k| k.table_count()).collect::<Vec<_>>(),
        db.journal_count()
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = |i: usize| -> anyhow::Result<&str> {
        args.get(i)
            .map(String::as_str)
            .ok_or_else(|| anyhow::anyhow!("missing argument {i}; see README.md"))
    };
    match a(0)? {
        "write" => {
            let (engine, path) = (a(1)?, PathBuf::from(a(2)?));
            let (n, batch): (usize, usize) = (a(3)?.parse()?, a(4)?.parse()?);
            let rate = write(engine, &path, n, batch)?;
            println!(
                "{engine}: {rate:.0} messages/s ({n} messages, {batch} per commit, fsync each)"
            );
            report_disk(&path, n);
        }
        "open" => open_and_read(a(1)?, &PathBuf::from(a(2)?), a(3)?.parse()?)?,
        "compact" => {
            anyhow::ensure!(a(1)? == "fjall", "only fjall compacts");
            compact_fjall(&PathBuf::from(a(2)?))?
        }
        dir => {
            let dir = PathBuf::from(dir);
            let (n, batch): (usize, usize) = (a(1)?.parse()?, a(2)?.parse()?);
            for engine in ["sled", "fjall"] {
                let path = dir.join(format!("{engine}-{n}-{batch}"));
                let _ = std::fs::remove_dir_all(&path);
                // each engine in its own process so RSS and threads are not mixed up
                let ok = std::process::Command::new(std::env::current_exe()?)
                    .args([
                        "write",
                        engine,
                        path.to_str().unwrap(),
                        &n.to_string(),
                        &batch.to_string(),
                    ])
                    .status()?
                    .success();
                std::fs::remove_dir_all(&path)?;
                anyhow::ensure!(ok, "{engine} run failed");
            }
        }
    }
    Ok(())
}
