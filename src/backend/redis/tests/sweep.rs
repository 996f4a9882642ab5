//! The sweeper takes back every job of a dead worker, however many it held.
use super::*;

#[test]
fn a_dead_worker_holding_thousands_of_jobs_gets_them_all_taken_back() {
    let Some(server) = server() else { return };
    let lease = Duration::from_millis(200);
    let dead = backend(&server, lease);
    let queue: Arc<str> = Arc::from("many");
    dead.declare_queue(&queue, &declaration(), true).unwrap();
    // Enough that its lease hash is a large hash table: a sweep that scanned it from its start
    // each time (HSCAN from cursor 0) stopped finding jobs part way, 27,834 of them stranded.
    const HELD: usize = 40_000;
    let mut jobs: Vec<Job> = (0..HELD as u32)
        .map(|n| job(&queue, n, Priority::Normal))
        .collect();
    dead.push(&queue, &mut jobs, &declaration).unwrap();
    let taken = dead
        .fetch(&queue, request(HELD), &AtomicBool::new(false))
        .unwrap();
    assert_eq!(taken.len(), HELD);
    dead.close(); // stops renewing, as if it died
    let rescuer = backend(&server, lease);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut counts = rescuer.counts(&queue).unwrap();
    while counts.waiting < HELD as u64 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        counts = rescuer.counts(&queue).unwrap();
    }
    assert_eq!((counts.waiting, counts.active), (HELD as u64, 0));
}
