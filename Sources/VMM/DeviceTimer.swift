import Foundation

/// The clock of the machine's devices: a thread that sleeps until the
/// earliest event a device asks for (the RTC's periodic, update and alarm
/// interrupts, the PM timer's status) and then brings every device up to
/// the clock, with the device lock held as the vCPU threads hold it. A
/// device access that may move an event (a register write, a read of the
/// RTC's register C) calls `reschedule()`.
final class DeviceTimer: @unchecked Sendable {
    /// A device's side: when it next needs `update` (nil for no event),
    /// and the update. Both run with the device lock held.
    struct Source {
        var nextEvent: () -> Date?
        var update: () -> Void
    }

    private let condition = NSCondition()
    private var stopped = false
    private var rescheduled = false
    private var started = false
    private let ended = DispatchSemaphore(value: 0)
    private let deviceLock: NSLock
    private let sources: [Source]

    init(deviceLock: NSLock, sources: [Source]) {
        self.deviceLock = deviceLock
        self.sources = sources
    }

    deinit { stop() }

    /// Starts the thread; once.
    func start() {
        let first = condition.withLock { () -> Bool in
            defer { started = true }
            return !started && !stopped
        }
        guard first else { return }
        // The thread holds the timer (not the machine) until `stop`, and
        // lets go of it before it says so: Foundation keeps the closure a
        // while after, which must not keep the devices, and through their
        // interrupts the VM, alive.
        let holder = Holder(self)
        let ended = self.ended
        let thread = Thread {
            holder.timer?.run()
            holder.timer = nil
            ended.signal()
        }
        thread.name = "device timer"
        thread.start()
    }

    /// Ends the thread and waits for it.
    func stop() {
        let wasRunning = condition.withLock { () -> Bool in
            let running = started && !stopped
            stopped = true
            condition.signal()
            return running
        }
        if wasRunning { ended.wait() }
    }

    /// A device's next event may have changed: look again.
    func reschedule() {
        condition.withLock {
            rescheduled = true
            condition.signal()
        }
    }

    private final class Holder: @unchecked Sendable {
        var timer: DeviceTimer?
        init(_ timer: DeviceTimer) { self.timer = timer }
    }

    private func run() {
        while true {
            deviceLock.lock()
            for source in sources { source.update() }
            let next = sources.compactMap { $0.nextEvent() }.min()
            deviceLock.unlock()
            condition.lock()
            if stopped {
                condition.unlock()
                return
            }
            if !rescheduled {
                if let next { _ = condition.wait(until: next) } else { condition.wait() }
            }
            rescheduled = false
            condition.unlock()
        }
    }
}
