//! The sampler against the machine the tests run on, and its pure helpers.

use std::time::{Duration, Instant};

use super::*;

/// How long the CPU test's busy thread spins: the two samples 1 s apart,
/// plus a margin on each side.
const SPIN: Duration = Duration::from_millis(1_500);

/// Time between the CPU test's two samples.
const CPU_WINDOW: Duration = Duration::from_secs(1);

#[test]
fn a_sample_of_this_machine_is_plausible() {
    let sample = Sampler::new().unwrap().sample();

    let mem_total = meminfo_total_bytes();
    let off_by = sample.mem_total_bytes.abs_diff(mem_total);
    assert!(
        off_by <= mem_total / 100,
        "{} vs {mem_total}",
        sample.mem_total_bytes
    );
    assert!(sample.mem_used_bytes <= sample.mem_total_bytes);
    assert!(sample.swap_used_bytes <= sample.swap_total_bytes);

    let root = nix::sys::statvfs::statvfs("/").unwrap();
    let root_total = root.fragment_size() * root.blocks();
    assert!(
        sample
            .disks
            .iter()
            .any(|disk| disk.total_bytes == root_total),
        "no disk of {root_total} bytes (the root filesystem) in {:?}",
        sample.disks
    );
    for disk in &sample.disks {
        assert!(
            disk.total_bytes > 0 && disk.used_bytes <= disk.total_bytes,
            "{disk:?}"
        );
    }

    assert_eq!(sample.cpu_per_core.len(), cpuinfo_processors());
    assert!(
        (0.0..=100.0).contains(&sample.cpu_percent),
        "{}",
        sample.cpu_percent
    );
    assert!(
        sample.load.iter().all(|load| *load >= 0.0),
        "{:?}",
        sample.load
    );
    assert!(sample.uptime_secs > 0);
    assert!(sample.processes > 0);
    let now = now_ms();
    assert!(sample.ts_ms <= now && now - sample.ts_ms < 60_000);
}

#[test]
fn cpu_use_rises_while_a_core_spins() {
    let spinner = std::thread::spawn(|| {
        let started = Instant::now();
        let mut spins = 0u64;
        while started.elapsed() < SPIN {
            spins = std::hint::black_box(spins.wrapping_add(1));
        }
    });
    let mut sampler = Sampler::new().unwrap();
    sampler.sample();
    std::thread::sleep(CPU_WINDOW);
    let busy = sampler.sample();
    spinner.join().unwrap();
    // One busy core of n is 100/n percent of the host; ask for half of that.
    let cores = busy.cpu_per_core.len();
    let threshold = 100.0 / (2.0 * cores as f32);
    assert!(
        busy.cpu_percent > threshold,
        "{}% with one of {cores} cores busy",
        busy.cpu_percent
    );
}

#[test]
fn network_rates_are_per_second_of_the_elapsed_time() {
    assert_eq!(per_second(1_000, Duration::from_millis(500)), 2_000);
    assert_eq!(per_second(3, Duration::from_secs(2)), 1);
    assert_eq!(per_second(1_000, Duration::ZERO), 0);
    assert_eq!(per_second(u64::MAX, Duration::from_micros(1)), u64::MAX);
}

#[test]
fn disks_are_listed_once_each_and_empty_ones_skipped() {
    let disk = |mount: &str, device, total_bytes| MountedDisk {
        mount: mount.into(),
        device,
        total_bytes,
        available_bytes: total_bytes / 4,
    };
    let disks = distinct_disks([
        disk("/etc/hosts", Some(1), 100),
        disk("/", Some(1), 100),
        disk("/home", Some(2), 400),
        disk("/empty", Some(3), 0),
        disk("/mnt", None, 40),
        disk("/mnt", None, 40),
    ]);
    let listed: Vec<_> = disks
        .iter()
        .map(|d| (d.mount.as_str(), d.used_bytes, d.total_bytes))
        .collect();
    assert_eq!(
        listed,
        [("/", 75, 100), ("/home", 300, 400), ("/mnt", 30, 40)]
    );
}

#[test]
fn percentages_stay_in_range() {
    assert_eq!(percent(f32::NAN), 0.0);
    assert_eq!(percent(-1.0), 0.0);
    assert_eq!(percent(100.5), 100.0);
    assert_eq!(percent(42.0), 42.0);
}

/// `MemTotal` from `/proc/meminfo`, in bytes.
fn meminfo_total_bytes() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))
        .unwrap();
    let kib: u64 = line.trim().trim_end_matches("kB").trim().parse().unwrap();
    kib * 1024
}

/// Online processors, as `/proc/cpuinfo` lists them.
fn cpuinfo_processors() -> usize {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    cpuinfo
        .lines()
        .filter(|line| line.starts_with("processor"))
        .count()
}
