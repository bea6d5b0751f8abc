//! What sled 0.34 alone can write on this machine, for the benchmark's "where the time goes":
//! N fresh messages, each the keys a message costs in flowhook's layout (a 300-byte record,
//! two callback-index entries, a recipient-index entry, a time-index entry, one shared
//! counter), committed `batch` messages at a time with a flush after each commit, in three
//! ways: one transaction over five trees (what flowhook does), one `apply_batch` per tree (not
//! atomic across trees), and one `apply_batch` on a single tree. No HTTP, no parsing, no
//! folding: an upper bound for ingest through sled.
//!
//! `cargo run --release --example sled_floor -- <dir> [messages, default 200000] [batch, default 16]`

use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The keys of message `k`: (tree index, key, value).
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

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(
        args.next()
            .ok_or_else(|| anyhow::anyhow!("usage: sled_floor <dir> [n] [batch]"))?,
    );
    let n: usize = args.next().map_or(Ok(200_000), |a| a.parse())?;
    let batch: usize = args.next().map_or(Ok(16), |a| a.parse())?;
    for mode in ["transaction", "batch per tree", "one tree"] {
        let path = dir.join(mode.replace(' ', "-"));
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(64 << 20)
            .flush_every_ms(None)
            .open()?;
        let trees: Vec<sled::Tree> = (0..5)
            .map(|i| db.open_tree(format!("t{i}")))
            .collect::<Result<_, _>>()?;
        let started = std::time::Instant::now();
        for first in (0..n).step_by(batch) {
            let rows: Vec<_> = (first..(first + batch).min(n)).flat_map(keys).collect();
            match mode {
                "transaction" => {
                    (&trees[0], &trees[1], &trees[2], &trees[3], &trees[4])
                        .transaction(|(a, b, c, d, e)| {
                            let trees = [a, b, c, d, e];
                            for (t, k, v) in &rows {
                                trees[*t].insert(k.as_slice(), v.as_slice())?;
                            }
                            Ok::<_, ConflictableTransactionError<()>>(())
                        })
                        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                }
                "batch per tree" => {
                    let mut batches: Vec<sled::Batch> =
                        (0..5).map(|_| Default::default()).collect();
                    for (t, k, v) in rows {
                        batches[t].insert(k, v);
                    }
                    for (tree, b) in trees.iter().zip(batches) {
                        tree.apply_batch(b)?;
                    }
                }
                _ => {
                    let mut b = sled::Batch::default();
                    for (t, mut k, v) in rows {
                        k.insert(0, t as u8);
                        b.insert(k, v);
                    }
                    trees[0].apply_batch(b)?;
                }
            }
            db.flush()?;
        }
        let rate = n as f64 / started.elapsed().as_secs_f64();
        println!("sled floor, {mode}: {rate:.0} messages/s ({n} messages, {batch} per commit, a flush each)");
        drop(trees);
        drop(db);
        std::fs::remove_dir_all(&path)?;
    }
    Ok(())
}
