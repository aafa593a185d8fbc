//! How to make a batch of small published files durable: the three ways the engine could sync a bundle
//! of small files before renaming them into place, timed side by side on the same directory.
//!
//!     cargo run --release -p xfd-bench --bin xfd-sync-bench -- DIR [FILES] [BYTES] [ROUNDS] [NOISE_MIB]
//!
//! NOISE_MIB (default 0) of unsynced data is written to another file of DIR before each round: the
//! dirty pages a neighbour (a training job writing checkpoints) leaves on the same file system.
//! Each round writes FILES files of BYTES bytes into DIR as part files, makes them durable, renames
//! them into place and syncs DIR once (what a crash-safe publish needs), then removes them. Prints one
//! Markdown row per strategy: the median round's seconds and files per second.
//!
//! - `fsync-each`: `fdatasync` of every file (what a per-file download script does);
//! - `syncfs`: one `syncfs` of the file system once all files are written;
//! - `write-behind`: `sync_file_range(SYNC_FILE_RANGE_WRITE)` after each write (starts write-back at
//!   once), then `fdatasync` of every file before the renames.

use std::fs::{self, File};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Copy, Debug)]
enum Strategy {
    FsyncEach,
    Syncfs,
    WriteBehind,
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first().map(PathBuf::from) else {
        eprintln!("usage: xfd-sync-bench DIR [FILES=1000] [BYTES=1024] [ROUNDS=5]");
        std::process::exit(2);
    };
    let number = |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (files, bytes, rounds, noise) = (number(1, 1000), number(2, 1024), number(3, 5), number(4, 0));
    fs::create_dir_all(&dir)?;
    println!("| strategy | files x bytes | neighbour's dirty MiB | median round (s) | files/s |");
    println!("|---|---|---|---|---|");
    // Interleaved rounds: a disk that speeds up or slows down during the run affects every strategy.
    let strategies = [Strategy::FsyncEach, Strategy::Syncfs, Strategy::WriteBehind];
    let mut times = vec![Vec::new(); strategies.len()];
    for _ in 0..rounds {
        for (index, strategy) in strategies.iter().enumerate() {
            write_noise(&dir, noise)?;
            times[index].push(round(&dir, *strategy, files, bytes)?);
        }
    }
    for (strategy, mut seconds) in strategies.into_iter().zip(times) {
        seconds.sort_by(f64::total_cmp);
        let median = seconds[seconds.len() / 2];
        let rate = files as f64 / median;
        println!("| {strategy:?} | {files} x {bytes} | {noise} | {median:.3} | {rate:.0} |");
    }
    Ok(())
}

fn round(dir: &Path, strategy: Strategy, files: usize, bytes: usize) -> std::io::Result<f64> {
    let data = vec![0x5a_u8; bytes];
    let started = Instant::now();
    let mut written = Vec::with_capacity(files);
    for i in 0..files {
        let part = dir.join(format!(".f{i:06}.part"));
        let mut file = File::create(&part)?;
        file.write_all(&data)?;
        match strategy {
            Strategy::FsyncEach => file.sync_data()?,
            Strategy::WriteBehind => {
                check(unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) })?
            }
            Strategy::Syncfs => {}
        }
        written.push((part, file));
    }
    match strategy {
        Strategy::Syncfs => check(unsafe { libc::syncfs(written[0].1.as_raw_fd()) })?,
        Strategy::WriteBehind => written.iter().try_for_each(|(_, file)| file.sync_data())?,
        Strategy::FsyncEach => {}
    }
    for (i, (part, _)) in written.iter().enumerate() {
        fs::rename(part, dir.join(format!("f{i:06}")))?;
    }
    File::open(dir)?.sync_all()?;
    let seconds = started.elapsed().as_secs_f64();
    for i in 0..files {
        fs::remove_file(dir.join(format!("f{i:06}")))?;
    }
    File::open(dir)?.sync_all()?;
    Ok(seconds)
}

/// Rewrites the neighbour's file without syncing it: its pages stay dirty until the kernel writes them.
fn write_noise(dir: &Path, mebibytes: usize) -> std::io::Result<()> {
    let path = dir.join(".neighbour");
    if mebibytes == 0 {
        return Ok(());
    }
    let mut file = File::create(path)?;
    let block = vec![0xa5_u8; 1 << 20];
    (0..mebibytes).try_for_each(|_| file.write_all(&block))
}

fn check(result: libc::c_int) -> std::io::Result<()> {
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
