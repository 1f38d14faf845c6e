//! hyper's timer, with a reset that costs a comparison when the deadline moves later.
//!
//! hyper arms its HTTP/1 header-read timeout again for every request head on a keep-alive
//! connection. With hyper-util's `TokioTimer` each of those resets moves an entry in Tokio's
//! timer wheel, under the wheel's lock, although the timer almost never fires: the head arrives
//! long before its deadline. Here a reset to a later deadline only records it; the armed sleep
//! stays where it is, and when it fires early it is armed once more for the recorded deadline. A
//! connection that keeps sending requests costs one wheel entry per header-read timeout
//! (seconds), not one per request.
//!
//! hyper also asks the timer for the time to set that deadline, once per request head (and, with
//! HTTP/2 keepalive on, which the mesh leaves off, at every frame received). hyper uses those
//! readings only for deadlines of seconds, so the timer reads the kernel's coarse clock, which
//! its vDSO keeps at the last tick (1-10 ms): a few loads where the precise clock reads the TSC
//! and converts it, a third of the cost (docs/BENCHMARKS.md).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};

/// The [`Timer`] every listener of the mesh gives hyper.
#[derive(Clone, Copy, Debug, Default)]
pub struct LazyTimer;

pin_project_lite::pin_project! {
    /// A sleep whose deadline may be later than the Tokio sleep armed for it.
    #[derive(Debug)]
    pub struct LazySleep {
        deadline: tokio::time::Instant,
        #[pin]
        armed: tokio::time::Sleep,
    }
}

impl Timer for LazyTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        // Tokio's clock, not the system's: the two differ when a test pauses Tokio's.
        self.sleep_until((tokio::time::Instant::now() + duration).into())
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        let deadline = deadline.into();
        Box::pin(LazySleep {
            deadline,
            armed: tokio::time::sleep_until(deadline),
        })
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        let Some(lazy) = sleep.as_mut().downcast_mut_pin::<LazySleep>() else {
            *sleep = self.sleep_until(new_deadline);
            return;
        };
        let lazy = lazy.project();
        let new_deadline = new_deadline.into();
        *lazy.deadline = new_deadline;
        // Only an earlier deadline needs the wheel now; a later one is caught when it fires.
        if new_deadline < lazy.armed.deadline() {
            lazy.armed.reset(new_deadline);
        }
    }

    /// The coarse clock, within a tick of the precise one: a deadline taken from it comes that
    /// much early or late. A paused Tokio clock does not stop it.
    fn now(&self) -> Instant {
        coarse_now()
    }
}

/// `Instant::now()` within a tick, from the kernel's coarse monotonic clock: the same timebase
/// as `Instant`, read without the TSC.
#[cfg(target_os = "linux")]
fn coarse_now() -> Instant {
    use nix::time::{ClockId, clock_gettime};
    use std::sync::OnceLock;

    fn read() -> Option<Duration> {
        clock_gettime(ClockId::CLOCK_MONOTONIC_COARSE)
            .ok()
            .map(Duration::from)
    }
    /// One reading of both clocks; later coarse readings are placed from it.
    static ORIGIN: OnceLock<Option<(Instant, Duration)>> = OnceLock::new();
    let origin = ORIGIN.get_or_init(|| Some((Instant::now(), read()?)));
    origin
        .and_then(|(instant, coarse)| instant.checked_add(read()?.checked_sub(coarse)?))
        .unwrap_or_else(Instant::now)
}

/// Other systems' timers read the precise clock.
#[cfg(not(target_os = "linux"))]
fn coarse_now() -> Instant {
    Instant::now()
}

impl Future for LazySleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            ready!(this.armed.as_mut().poll(cx));
            if *this.deadline <= this.armed.deadline() {
                return Poll::Ready(());
            }
            // Fired for a deadline that has since moved: arm it for the one that holds.
            let deadline = *this.deadline;
            this.armed.as_mut().reset(deadline);
        }
    }
}

impl Sleep for LazySleep {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `sleep` has fired by now, without waiting.
    fn fired(sleep: &mut Pin<Box<dyn Sleep>>) -> bool {
        let waker = futures::task::noop_waker();
        sleep
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_ready()
    }

    /// The clock the sleeps follow, paused in these tests.
    fn tokio_now() -> Instant {
        tokio::time::Instant::now().into_std()
    }

    async fn advance_ms(ms: u64) {
        tokio::time::advance(Duration::from_millis(ms)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn fires_at_its_deadline_and_not_before() {
        let mut sleep = LazyTimer.sleep(Duration::from_secs(10));
        advance_ms(9_999).await;
        assert!(!fired(&mut sleep));
        advance_ms(1).await;
        assert!(fired(&mut sleep));
    }

    #[tokio::test(start_paused = true)]
    async fn a_later_deadline_holds_past_the_first_one() {
        let mut sleep = LazyTimer.sleep(Duration::from_secs(10));
        assert!(!fired(&mut sleep));
        advance_ms(6_000).await;
        LazyTimer.reset(&mut sleep, tokio_now() + Duration::from_secs(10));
        advance_ms(5_000).await;
        assert!(!fired(&mut sleep), "fired at the first deadline");
        advance_ms(4_999).await;
        assert!(!fired(&mut sleep));
        advance_ms(1).await;
        assert!(fired(&mut sleep));
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_fires_early() {
        let mut sleep = LazyTimer.sleep(Duration::from_secs(10));
        LazyTimer.reset(&mut sleep, tokio_now() + Duration::from_secs(1));
        advance_ms(999).await;
        assert!(!fired(&mut sleep));
        advance_ms(1).await;
        assert!(fired(&mut sleep));
    }

    #[tokio::test(start_paused = true)]
    async fn many_resets_keep_the_last_deadline() {
        let mut sleep = LazyTimer.sleep(Duration::from_secs(10));
        for _ in 0..1_000 {
            advance_ms(50).await;
            LazyTimer.reset(&mut sleep, tokio_now() + Duration::from_secs(10));
        }
        // 50 s have passed, five times the timeout, and the last reset was just now.
        advance_ms(9_999).await;
        assert!(!fired(&mut sleep));
        advance_ms(1).await;
        assert!(fired(&mut sleep));
    }

    #[test]
    fn the_coarse_clock_keeps_within_a_tick_of_the_precise_one() {
        // A tick is 1 to 10 ms; the margin leaves room for the test being descheduled.
        let margin = Duration::from_millis(50);
        let mut last = coarse_now();
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(100) {
            let before = Instant::now();
            let coarse = coarse_now();
            let after = Instant::now();
            assert!(coarse >= last, "the coarse clock went back");
            assert!(coarse + margin >= before && coarse <= after + margin);
            last = coarse;
        }
        assert!(last >= start, "the coarse clock moved with the precise one");
    }
}
