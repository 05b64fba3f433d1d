import CLinuxKVM
import Glibc

/// Interrupting a thread that is blocked in KVM_RUN: a signal whose handler
/// does nothing and does not restart the call, so KVM_RUN returns EINTR.
public enum ThreadKick {
    private static let installation: Int32 = {
        swiftkvm_install_kick_handler(swiftkvm_kick_signal()) == 0 ? 0 : errno
    }()

    /// Installs the kick signal's handler (once per process) and returns 0,
    /// or the errno that `sigaction` gave.
    @discardableResult
    public static func install() -> Int32 { installation }

    /// Unblocks the kick signal in the calling thread, which may have
    /// inherited a mask that blocks it; a blocked signal would leave KVM_RUN
    /// running.
    public static func unblockInCurrentThread() {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, swiftkvm_kick_signal())
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
    }

    /// The calling thread, as a value another thread can kick.
    public static var currentThread: UInt { UInt(pthread_self()) }

    /// Sends the kick signal to `thread`. The caller must know that the thread
    /// has not ended (the vCPU guards this with the lock it runs under).
    public static func kick(thread: UInt) {
        _ = pthread_kill(pthread_t(thread), swiftkvm_kick_signal())
    }
}
