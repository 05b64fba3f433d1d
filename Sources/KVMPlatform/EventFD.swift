import CLinuxKVM
import Glibc
import SystemPackage

/// A Linux eventfd: a 64-bit counter behind a real descriptor, which KVM's
/// irqfd and ioeventfd signal and wait on. Closed once, when the last
/// reference goes.
public final class EventFD: Sendable {
    /// The descriptor, for handing to KVM_IRQFD, KVM_IOEVENTFD or epoll.
    public let rawValue: Int32

    /// Creates an eventfd (`eventfd(2)`), close-on-exec.
    /// - Parameters:
    ///   - initialValue: the counter's starting value.
    ///   - nonBlocking: reads return EAGAIN instead of waiting when the counter is 0.
    ///   - semaphore: each read takes 1 from the counter instead of all of it.
    public init(initialValue: UInt32 = 0, nonBlocking: Bool = false, semaphore: Bool = false) throws(Errno) {
        var flags = Int32(EFD_CLOEXEC)
        if nonBlocking { flags |= Int32(EFD_NONBLOCK) }
        if semaphore { flags |= Int32(EFD_SEMAPHORE) }
        let fd = eventfd(initialValue, flags)
        guard fd >= 0 else { throw Errno(rawValue: errno) }
        rawValue = fd
    }

    /// Adds `value` to the counter (`write(2)` of 8 bytes), waking a waiter.
    public func signal(_ value: UInt64 = 1) throws(Errno) {
        var value = value
        let written = withUnsafeBytes(of: &value) { Glibc.write(rawValue, $0.baseAddress, 8) }
        guard written == 8 else { throw Errno(rawValue: errno) }
    }

    /// Reads and resets the counter (`read(2)` of 8 bytes). Waits while it is
    /// 0 unless the eventfd is non-blocking, which then throws EAGAIN.
    public func wait() throws(Errno) -> UInt64 {
        var value: UInt64 = 0
        let count = withUnsafeMutableBytes(of: &value) { Glibc.read(rawValue, $0.baseAddress, 8) }
        guard count == 8 else { throw Errno(rawValue: errno) }
        return value
    }

    /// Whether the counter is non-zero now, without consuming it (`poll(2)` with no timeout).
    public func isSignaled(timeoutMilliseconds: Int32 = 0) -> Bool {
        var entry = pollfd(fd: rawValue, events: Int16(POLLIN), revents: 0)
        return poll(&entry, 1, timeoutMilliseconds) == 1 && entry.revents & Int16(POLLIN) != 0
    }

    deinit { _ = Glibc.close(rawValue) }
}
