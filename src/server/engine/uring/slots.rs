//! Bookkeeping of one ring's send slots, kept apart from the ring so it can be tested alone.
//!
//! A slot's memory (header, iovecs, msghdr) may be read by the kernel from the moment
//! `io_uring_enter` consumes its SQE until its completion is reaped, and not before: an SQE
//! still queued in the submission ring has not been seen. So a slot is *free*, *queued* (pushed,
//! not yet submitted) or *in flight* (submitted); a ring's memory may be freed only when
//! nothing is in flight, and every `io_uring_enter` result (submitted count or error) is
//! accounted here, exactly.

use std::io;

/// Which send slots are free, queued or in flight.
#[derive(Debug)]
pub struct SlotBook {
    free: Vec<u16>,
    queued: usize,
    in_flight: usize,
}

/// What to do after an `io_uring_enter` error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnterError {
    /// Interrupted, or the kernel is short of something (EAGAIN) or wants completions reaped
    /// first (EBUSY): the queued entries stay queued; try again.
    Retry,
    /// Anything else: the ring is unusable.
    Fatal,
}

impl EnterError {
    pub fn of(e: &io::Error) -> Self {
        match e.raw_os_error() {
            Some(libc::EINTR | libc::EAGAIN | libc::EBUSY) => EnterError::Retry,
            _ => EnterError::Fatal,
        }
    }
}

/// How draining a ring before freeing it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Nothing in flight: the memory may go.
    Clean,
    /// The kernel may still read the slots and cannot be waited for: leak them rather than
    /// free memory it could read.
    MustLeak,
}

impl SlotBook {
    pub fn new(slots: usize) -> Self {
        SlotBook {
            free: (0..slots as u16).rev().collect(),
            queued: 0,
            in_flight: 0,
        }
    }

    /// The slot [`SlotBook::take`] would hand out, if any.
    pub fn peek_free(&self) -> Option<u16> {
        self.free.last().copied()
    }

    /// Hands out a free slot, which the caller pushes to the submission queue.
    pub fn take(&mut self) -> Option<u16> {
        let s = self.free.pop()?;
        self.queued += 1;
        Some(s)
    }

    /// `io_uring_enter` consumed `n` queued entries: the kernel now owns them.
    pub fn submitted(&mut self, n: usize) {
        let n = n.min(self.queued);
        self.queued -= n;
        self.in_flight += n;
    }

    /// The completion of `slot` was reaped: it is free again.
    pub fn completed(&mut self, slot: u16) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.free.push(slot);
    }

    pub fn has_free(&self) -> bool {
        !self.free.is_empty()
    }

    pub fn queued(&self) -> usize {
        self.queued
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Waits out everything in flight before the slots are freed. Interruptions are retried;
    /// only an error that makes waiting impossible ends it early, with [`Drained::MustLeak`].
    pub fn drain(&mut self, ring: &mut impl Completions) -> Drained {
        let mut fatal_tries = 0;
        while self.in_flight > 0 {
            match ring.enter_and_wait() {
                Ok(n) => self.submitted(n),
                Err(e) if EnterError::of(&e) == EnterError::Retry => {}
                Err(_) => {
                    fatal_tries += 1;
                    if fatal_tries >= 3 {
                        ring.reap(self);
                        if self.in_flight > 0 {
                            return Drained::MustLeak;
                        }
                        break;
                    }
                }
            }
            ring.reap(self);
        }
        Drained::Clean
    }
}

/// What [`SlotBook::drain`] needs of a ring.
pub trait Completions {
    /// Submits what is queued and waits for at least one completion (`io_uring_enter`);
    /// returns how many entries it submitted.
    fn enter_and_wait(&mut self) -> io::Result<usize>;
    /// Takes the completions there are, freeing their slots in `book`.
    fn reap(&mut self, book: &mut SlotBook);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    #[test]
    fn only_what_the_kernel_consumed_is_in_flight() {
        let mut b = SlotBook::new(4);
        for _ in 0..4 {
            b.take().unwrap();
        }
        assert!(b.take().is_none());
        // The kernel took 3 of the 4 queued entries (say EBUSY stopped it).
        b.submitted(3);
        assert_eq!((b.queued(), b.in_flight()), (1, 3));
        // A failed enter submits nothing: nothing more is in flight.
        assert_eq!(EnterError::of(&err(libc::EBUSY)), EnterError::Retry);
        assert_eq!(EnterError::of(&err(libc::EAGAIN)), EnterError::Retry);
        assert_eq!(EnterError::of(&err(libc::EINTR)), EnterError::Retry);
        assert_eq!(EnterError::of(&err(libc::EBADF)), EnterError::Fatal);
        for s in [3, 2, 1] {
            b.completed(s);
        }
        // A session failed now is released at once: the queued entry was never seen by the
        // kernel. (Counting all 4 as in flight left the session, and its --max-sessions
        // place, waiting for a completion that could never come.)
        assert_eq!(b.in_flight(), 0);
        assert_eq!(b.queued(), 1);
        // More than was queued can never be submitted.
        b.submitted(10);
        assert_eq!((b.queued(), b.in_flight()), (0, 1));
    }

    /// A ring whose `enter` answers are scripted; its completions come one per reap, once
    /// an `enter` has succeeded.
    struct FakeRing {
        answers: Vec<io::Result<usize>>,
        completions: Vec<u16>,
        enters: usize,
        succeeded: bool,
    }

    impl FakeRing {
        fn new(answers: Vec<io::Result<usize>>, completions: Vec<u16>) -> Self {
            FakeRing {
                answers,
                completions,
                enters: 0,
                succeeded: false,
            }
        }
    }

    impl Completions for FakeRing {
        fn enter_and_wait(&mut self) -> io::Result<usize> {
            self.enters += 1;
            let answer = if self.answers.is_empty() {
                Ok(0)
            } else {
                self.answers.remove(0)
            };
            self.succeeded |= answer.is_ok();
            answer
        }
        fn reap(&mut self, book: &mut SlotBook) {
            if self.succeeded {
                if let Some(s) = self.completions.pop() {
                    book.completed(s);
                }
            }
        }
    }

    #[test]
    fn an_interrupted_drain_keeps_waiting() {
        let mut b = SlotBook::new(2);
        b.take();
        b.take();
        b.submitted(2);
        // Interrupted twice (a signal: EINTR), then the kernel works. Breaking out on the
        // first error used to free slots the kernel could still read.
        let mut ring = FakeRing::new(
            vec![Err(err(libc::EINTR)), Err(err(libc::EINTR))],
            vec![1, 0],
        );
        assert_eq!(b.drain(&mut ring), Drained::Clean);
        assert_eq!(b.in_flight(), 0);
        assert_eq!(ring.enters, 4);
    }

    #[test]
    fn a_drain_that_cannot_wait_says_leak() {
        let mut b = SlotBook::new(2);
        b.take();
        b.submitted(1);
        let mut ring = FakeRing::new((0..5).map(|_| Err(err(libc::EBADF))).collect(), vec![0]);
        assert_eq!(b.drain(&mut ring), Drained::MustLeak);
        assert_eq!(b.in_flight(), 1);
    }

    #[test]
    fn entries_queued_during_a_drain_are_counted_when_submitted() {
        let mut b = SlotBook::new(3);
        b.take();
        b.take();
        b.submitted(1);
        // The drain's enter also submits the entry still queued.
        let mut ring = FakeRing::new(vec![Ok(1)], vec![1, 0]);
        assert_eq!(b.drain(&mut ring), Drained::Clean);
        assert_eq!((b.queued(), b.in_flight()), (0, 0));
    }
}
