import CLinuxKVM
import Glibc
import KVM
import Synchronization
import SystemPackage
import X86

// The in-kernel 8254 PIT, after the kernel's arch/x86/kvm/i8254.c: three
// counters on ports 0x40-0x43, counter 2's gate and output on port 0x61
// (the speaker device, with KVM_PIT_SPEAKER_DUMMY), counter 0's interrupt
// on GSI 0 from a timer of the host's monotonic clock, with the kernel's
// reinjection of missed ticks; and the PIT's requests (KVM_CREATE_PIT2,
// KVM_GET/SET_PIT(2), KVM_REINJECT_CONTROL).
//
// As in the kernel, counter 0's count is read from its timer (how far into
// the period it is), counters 1 and 2 from the time their count was loaded.

let KVM_PIT_BASE_ADDRESS: UInt16 = 0x40
let KVM_SPEAKER_BASE_ADDRESS: UInt16 = 0x61
/// The port ranges the PIT and the speaker are registered with on the PIO bus.
let KVM_PIT_MEM_LENGTH = 4
let KVM_SPEAKER_MEM_LENGTH = 4
let KVM_PIT_CHANNEL_MASK: UInt16 = 3
/// The 8254's input clock, 1.193182 MHz.
let KVM_PIT_FREQ: UInt32 = 1_193_182
let NSEC_PER_SEC: UInt32 = 1_000_000_000
/// The kvm module's min_timer_period_us default: a periodic timer of a
/// shorter period is slowed to this, since the host does not throttle it.
let min_timer_period_us: Int64 = 200
/// The irq source id the PIT holds GSI 0 with: the third requested, after
/// user space's and the irqfd resampler's.
let KVM_PIT_IRQ_SOURCE_ID = 2

let RW_STATE_LSB: UInt8 = 1
let RW_STATE_MSB: UInt8 = 2
let RW_STATE_WORD0: UInt8 = 3
let RW_STATE_WORD1: UInt8 = 4

/// The kernel's ktime_get: CLOCK_MONOTONIC in nanoseconds, the clock
/// KVM_GET_PIT2's count_load_time is in.
func ktime_get() -> Int64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Int64(now.tv_sec) * Int64(NSEC_PER_SEC) + Int64(now.tv_nsec)
}

/// The kernel's mul_u64_u32_div: a * mul / divisor with a 128-bit product,
/// truncated to 64 bits.
func mul_u64_u32_div(_ a: UInt64, _ mul: UInt32, _ divisor: UInt32) -> UInt64 {
    let product = a.multipliedFullWidth(by: UInt64(mul))
    let d = UInt64(divisor)
    // Reducing the high half first keeps the quotient in 64 bits: what a
    // 128-bit division truncated to 64 bits gives.
    return d.dividingFullWidth((high: product.high % d, low: product.low)).quotient
}

/// One counter (`struct kvm_kpit_channel_state`), field for field the uapi
/// `struct kvm_pit_channel_state` that KVM_GET_PIT2 copies out.
struct KPITChannelState: Equatable, Sendable {
    /// The initial count; 0x10000 stands for a programmed 0.
    var count: UInt32 = 0
    var latchedCount: UInt16 = 0
    /// The access mode the latched count is read with, 0 when none is latched.
    var countLatched: UInt8 = 0
    var statusLatched: UInt8 = 0
    var status: UInt8 = 0
    var readState: UInt8 = 0
    var writeState: UInt8 = 0
    /// The low byte of a two-byte count, until the high byte comes.
    var writeLatch: UInt8 = 0
    var rwMode: UInt8 = 0
    var mode: UInt8 = 0
    var bcd: UInt8 = 0
    var gate: UInt8 = 0
    /// ktime_get() when the count was loaded (counters 1 and 2), or when
    /// the gate rose in a mode it restarts.
    var countLoadTime: Int64 = 0

    init() {}

    init(_ c: kvm_pit_channel_state) {
        count = c.count; latchedCount = c.latched_count; countLatched = c.count_latched
        statusLatched = c.status_latched; status = c.status; readState = c.read_state
        writeState = c.write_state; writeLatch = c.write_latch; rwMode = c.rw_mode
        mode = c.mode; bcd = c.bcd; gate = c.gate; countLoadTime = c.count_load_time
    }

    var kernelState: kvm_pit_channel_state {
        kvm_pit_channel_state(
            count: count, latched_count: latchedCount, count_latched: countLatched, status_latched: statusLatched,
            status: status, read_state: readState, write_state: writeState, write_latch: writeLatch,
            rw_mode: rwMode, mode: mode, bcd: bcd, gate: gate, count_load_time: countLoadTime)
    }
}

/// The PIT's state under its lock (`struct kvm_kpit_state` less the atomics):
/// the counters, the flags, and counter 0's timer, kept as the kernel's
/// hrtimer is (its expiry time and period).
struct KPITState: Sendable {
    var channels = [KPITChannelState(), KPITChannelState(), KPITChannelState()]
    var flags: UInt32 = 0
    var isPeriodic = false
    /// The timer's period in nanoseconds; 0 until counter 0 is first
    /// loaded in a counting mode. It is kept when the timer stops.
    var period: Int64 = 0
    /// When the timer next expires (hrtimer's expires), kept when it stops.
    var expires: Int64 = 0
    var timerArmed = false

    /// __kpit_elapsed: how far counter 0 is into its period, from the
    /// timer. A periodic timer whose expiry the PIT thread has not handled
    /// yet is taken as reloaded on time, as the hardware would be.
    func timerElapsed(now: Int64) -> Int64 {
        if period == 0 { return 0 }
        var remaining = expires - now
        if timerArmed && isPeriodic && remaining <= 0 {
            remaining = period - (now - expires) % period
        }
        return period - remaining
    }

    /// kpit_elapsed.
    func elapsed(_ channel: Int, now: Int64) -> Int64 {
        channel == 0 ? timerElapsed(now: now) : now - channels[channel].countLoadTime
    }

    /// The input clock's ticks since the count began (pit_get_count's d).
    func ticks(_ channel: Int, now: Int64) -> Int64 {
        Int64(bitPattern: mul_u64_u32_div(UInt64(bitPattern: elapsed(channel, now: now)), KVM_PIT_FREQ, NSEC_PER_SEC))
    }

    /// pit_get_count.
    func count(_ channel: Int, now: Int64) -> Int64 {
        let c = channels[channel]
        let d = ticks(channel, now: now)
        let count = Int64(c.count)
        switch c.mode {
        case 0, 1, 4, 5:
            return (count - d) & 0xFFFF
        case 3:
            // As the kernel does; it may be off for odd counts.
            return count == 0 ? count : count - (2 &* d) % count
        default:
            return count == 0 ? count : count - d % count
        }
    }

    /// pit_get_out.
    func out(_ channel: Int, now: Int64) -> Bool {
        let c = channels[channel]
        let d = ticks(channel, now: now)
        let count = Int64(c.count)
        switch c.mode {
        case 1: return d < count
        case 2: return count != 0 && d % count == 0 && d != 0
        case 3: return count != 0 && d % count < (count + 1) >> 1
        case 4, 5: return d == count
        default: return d >= count
        }
    }

    /// pit_latch_count: a second latch before the first is read is ignored.
    mutating func latchCount(_ channel: Int, now: Int64) {
        guard channels[channel].countLatched == 0 else { return }
        channels[channel].latchedCount = UInt16(truncatingIfNeeded: count(channel, now: now))
        channels[channel].countLatched = channels[channel].rwMode
    }

    /// pit_latch_status (the NULL COUNT bit is never set, as in the kernel).
    mutating func latchStatus(_ channel: Int, now: Int64) {
        guard channels[channel].statusLatched == 0 else { return }
        let c = channels[channel]
        channels[channel].status = (out(channel, now: now) ? 0x80 : 0) | c.rwMode << 4 | c.mode << 1 | c.bcd
        channels[channel].statusLatched = 1
    }

    /// pit_set_gate: a rising gate restarts the count in modes 1, 2, 3 and 5.
    mutating func setGate(_ channel: Int, _ value: UInt8, now: Int64) {
        switch channels[channel].mode {
        case 1, 2, 3, 5:
            if channels[channel].gate < value { channels[channel].countLoadTime = now }
        default:
            break
        }
        channels[channel].gate = value
    }

    /// pit_ioport_write, for port 0x40-0x43 less the base. What it asks of
    /// counter 0's timer is returned, for the caller to carry out.
    mutating func ioportWrite(_ address: Int, value: UInt8, now: Int64) -> TimerChange {
        if address == 3 {
            let channel = Int(value >> 6)
            if channel == 3 {
                // Read-back: bit 1 + n selects counter n; bit 5 clear latches
                // the count, bit 4 clear the status.
                for channel in 0..<3 where value & (2 << channel) != 0 {
                    if value & 0x20 == 0 { latchCount(channel, now: now) }
                    if value & 0x10 == 0 { latchStatus(channel, now: now) }
                }
            } else {
                let access = (value >> 4) & 3
                if access == 0 {
                    latchCount(channel, now: now)
                } else {
                    channels[channel].rwMode = access
                    channels[channel].readState = access
                    channels[channel].writeState = access
                    var mode = (value >> 1) & 7
                    if mode > 5 { mode -= 4 }  // 6 and 7 are modes 2 and 3.
                    channels[channel].mode = mode
                    channels[channel].bcd = value & 1
                }
            }
            return .none
        }
        let channel = address
        switch channels[channel].writeState {
        case RW_STATE_MSB:
            return loadCount(channel, UInt32(value) << 8, now: now)
        case RW_STATE_WORD0:
            channels[channel].writeLatch = value
            channels[channel].writeState = RW_STATE_WORD1
            return .none
        case RW_STATE_WORD1:
            let change = loadCount(channel, UInt32(channels[channel].writeLatch) | UInt32(value) << 8, now: now)
            channels[channel].writeState = RW_STATE_WORD0
            return change
        default:  // RW_STATE_LSB, and a counter never programmed.
            return loadCount(channel, UInt32(value), now: now)
        }
    }

    /// pit_ioport_read, for ports 0x40-0x42 less the base.
    mutating func ioportRead(_ channel: Int, now: Int64) -> UInt8 {
        if channels[channel].statusLatched != 0 {
            channels[channel].statusLatched = 0
            return channels[channel].status
        }
        let c = channels[channel]
        if c.countLatched != 0 {
            switch c.countLatched {
            case RW_STATE_MSB:
                channels[channel].countLatched = 0
                return UInt8(c.latchedCount >> 8)
            case RW_STATE_WORD0:
                channels[channel].countLatched = RW_STATE_MSB
                return UInt8(truncatingIfNeeded: c.latchedCount)
            default:
                channels[channel].countLatched = 0
                return UInt8(truncatingIfNeeded: c.latchedCount)
            }
        }
        let count = count(channel, now: now)
        switch c.readState {
        case RW_STATE_MSB:
            return UInt8(truncatingIfNeeded: count >> 8)
        case RW_STATE_WORD0:
            channels[channel].readState = RW_STATE_WORD1
            return UInt8(truncatingIfNeeded: count)
        case RW_STATE_WORD1:
            channels[channel].readState = RW_STATE_WORD0
            return UInt8(truncatingIfNeeded: count >> 8)
        default:
            return UInt8(truncatingIfNeeded: count)
        }
    }

    /// What a count load does to counter 0's timer.
    enum TimerChange: Equatable {
        case none
        /// create_pit_timer: start it for `count` input clocks.
        case start(count: UInt32, periodic: Bool)
        /// destroy_pit_timer.
        case stop
    }

    /// pit_load_count: a count of 0 is 0x10000 (65536 binary, 10000 BCD
    /// counting, which the kernel does not tell apart). Counters 1 and 2
    /// start counting from now; counter 0's mode decides its timer.
    mutating func loadCount(_ channel: Int, _ value: UInt32, now: Int64) -> TimerChange {
        let value = value == 0 ? 0x10000 : value
        channels[channel].count = value
        if channel != 0 {
            channels[channel].countLoadTime = now
            return .none
        }
        switch channels[0].mode {
        case 0, 1, 4: return .start(count: value, periodic: false)  // One-shot (mode 4 imprecise, as in the kernel).
        case 2, 3: return .start(count: value, periodic: true)
        default: return .stop
        }
    }

    /// kvm_pit_load_count: with the HPET's legacy mode just turned on,
    /// counter 0 is loaded with its timer stopped, and its mode kept.
    mutating func kvmLoadCount(_ channel: Int, _ value: UInt32, hpetLegacyStart: Bool, now: Int64) -> TimerChange {
        guard hpetLegacyStart else { return loadCount(channel, value, now: now) }
        let saved = channels[0].mode
        channels[0].mode = 0xFF
        let change = loadCount(channel, value, now: now)
        channels[0].mode = saved
        return change
    }
}

/// What the timer, the irqchip's ack and mask notifiers and the work share
/// without the PIT's lock (the atomics of `struct kvm_kpit_state`): the
/// reinjection state, and the eventfd that queues the work on the PIT's thread.
final class PITReinjection: Sendable {
    let reinject = Atomic<Bool>(false)
    /// Ticks not yet delivered, in reinject mode.
    let pending = Atomic<Int64>(0)
    /// Whether the last tick injected was acknowledged by the guest.
    let irqAck = Atomic<Int32>(1)
    /// kthread_queue_work: signalled to make the PIT's thread run pit_do_work.
    let work: Int32

    init?() {
        work = eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK))
        if work < 0 { return nil }
    }

    deinit { _ = Glibc.close(work) }

    /// kvm_pit_reset_reinject.
    func reset() {
        pending.store(0, ordering: .sequentiallyConsistent)
        irqAck.store(1, ordering: .sequentiallyConsistent)
    }

    /// kvm_pit_ack_irq: the guest ended the PIT's interrupt; a tick missed
    /// meanwhile is injected now.
    func acked() {
        irqAck.store(1, ordering: .sequentiallyConsistent)
        // atomic_dec_if_positive: what the count would be after the decrement.
        var old = pending.load(ordering: .sequentiallyConsistent)
        while old > 0 {
            let (exchanged, original) = pending.compareExchange(
                expected: old, desired: old - 1, ordering: .sequentiallyConsistent)
            if exchanged { break }
            old = original
        }
        if old - 1 > 0 { signalEventFD(work) }
    }

    /// pit_mask_notifer: unmasking GSI 0 forgets the ticks missed while masked.
    func maskChanged(_ masked: Bool) {
        if !masked { reset() }
    }
}

/// The PIT (`struct kvm_pit`): its state, the speaker device if it was
/// asked for, and a thread that is both the kernel's hrtimer (a timerfd on
/// the monotonic clock) and its kvm-pit worker. Ticks go to GSI 0 through
/// the irqchip, which wakes a halted vCPU as any interrupt does.
final class SoftPIT: Sendable {
    let state = Mutex(KPITState())
    let irqchip: SoftIrqchip
    let reinjection: PITReinjection
    /// KVM_PIT_SPEAKER_DUMMY: port 0x61 is served in the kernel.
    let hasSpeaker: Bool
    private let timerFD: Int32
    private let stopping = Atomic<Bool>(false)
    private let thread = Mutex<pthread_t?>(nil)

    /// kvm_create_pit: the PIT at reset, in reinject mode.
    init?(irqchip: SoftIrqchip, flags: UInt32) {
        guard let reinjection = PITReinjection() else { return nil }
        timerFD = timerfd_create(CLOCK_MONOTONIC, Int32(TFD_CLOEXEC | TFD_NONBLOCK))
        if timerFD < 0 { return nil }
        self.irqchip = irqchip
        self.reinjection = reinjection
        hasSpeaker = flags & UInt32(KVM_PIT_SPEAKER_DUMMY) != 0
        reset()
        state.withLock { _ in setReinject(true) }
    }

    deinit { _ = Glibc.close(timerFD) }

    /// kvm_pit_reset.
    private func reset() {
        let now = ktime_get()
        state.withLock { s in
            s.flags = 0
            for channel in 0..<3 {
                s.channels[channel].mode = 0xFF
                s.channels[channel].gate = channel != 2 ? 1 : 0
                apply(s.loadCount(channel, 0, now: now), to: &s, now: now)
            }
        }
        reinjection.reset()
    }

    // MARK: Counter 0's timer

    /// Carries out a count load's change to the timer; called with the lock held.
    private func apply(_ change: KPITState.TimerChange, to s: inout KPITState, now: Int64) {
        switch change {
        case .none:
            return
        case .stop:
            // destroy_pit_timer: period and expiry stay, as the hrtimer's do.
            s.timerArmed = false
            armTimerFD(nil)
        case .start(let count, let periodic):
            // create_pit_timer: no timer while the HPET drives IRQ 0.
            if s.flags & UInt32(KVM_PIT_FLAGS_HPET_LEGACY) != 0 { return }
            let interval = Int64(bitPattern: mul_u64_u32_div(UInt64(count), NSEC_PER_SEC, KVM_PIT_FREQ))
            s.period = interval
            s.isPeriodic = periodic
            reinjection.reset()
            if periodic { s.period = max(s.period, min_timer_period_us * 1000) }
            // The first expiry is one interval away even when the period was raised.
            s.expires = now + interval
            s.timerArmed = true
            armTimerFD(s.expires)
            startThreadIfNeeded()
        }
    }

    /// Sets the timerfd to go off at `expires` (monotonic ns), or disarms it.
    private func armTimerFD(_ expires: Int64?) {
        var spec = itimerspec()
        if let expires {
            // A zero it_value would disarm: an expiry already past is made 1 ns.
            let at = max(expires, 1)
            spec.it_value.tv_sec = Int(at / Int64(NSEC_PER_SEC))
            spec.it_value.tv_nsec = Int(at % Int64(NSEC_PER_SEC))
        }
        _ = timerfd_settime(timerFD, Int32(TFD_TIMER_ABSTIME), &spec, nil)
    }

    /// pit_timer_fn for every expiry up to now: how many there were. A
    /// periodic timer moves on by whole periods and is set again.
    private func expire(now: Int64) -> Int64 {
        state.withLock { s in
            guard s.timerArmed, now >= s.expires else {
                if s.timerArmed { armTimerFD(s.expires) }
                return 0
            }
            guard s.isPeriodic, s.period > 0 else {
                s.timerArmed = false
                return 1
            }
            let expiries = (now - s.expires) / s.period + 1
            s.expires += expiries * s.period
            armTimerFD(s.expires)
            return expiries
        }
    }

    /// pit_do_work: injects a tick on GSI 0, edge-triggered; in reinject
    /// mode only once the last one was acknowledged.
    private func doWork() {
        if reinjection.reinject.load(ordering: .sequentiallyConsistent)
            && reinjection.irqAck.exchange(0, ordering: .sequentiallyConsistent) == 0 {
            return
        }
        _ = irqchip.setIRQ(source: KVM_PIT_IRQ_SOURCE_ID, gsi: 0, level: true)
        _ = irqchip.setIRQ(source: KVM_PIT_IRQ_SOURCE_ID, gsi: 0, level: false)
        // The kernel also sends the tick as an NMI to LAPICs whose LINT0 is
        // in NMI mode (the NMI watchdog's virtual wire): that needs SoftKVM's LAPIC.
    }

    private func startThreadIfNeeded() {
        thread.withLock { thread in
            guard thread == nil, !stopping.load(ordering: .acquiring) else { return }
            let context = Unmanaged.passRetained(self).toOpaque()
            var handle = pthread_t()
            let r = pthread_create(&handle, nil, { context in
                guard let context else { return nil }
                let pit = Unmanaged<SoftPIT>.fromOpaque(context).takeRetainedValue()
                pit.run()
                return nil
            }, context)
            if r == 0 { thread = handle } else { Unmanaged<SoftPIT>.fromOpaque(context).release() }
        }
    }

    /// The thread: waits for the timer or queued work, and runs the work.
    private func run() {
        var fds = [pollfd(fd: timerFD, events: Int16(POLLIN), revents: 0),
                   pollfd(fd: reinjection.work, events: Int16(POLLIN), revents: 0)]
        var count: UInt64 = 0
        while !stopping.load(ordering: .acquiring) {
            fds[0].revents = 0
            fds[1].revents = 0
            if poll(&fds, 2, -1) < 0 { continue }
            if stopping.load(ordering: .acquiring) { break }
            var queued = false
            if fds[0].revents != 0 {
                _ = withUnsafeMutableBytes(of: &count) { Glibc.read(timerFD, $0.baseAddress, 8) }
                let expiries = expire(now: ktime_get())
                if expiries > 0 {
                    if reinjection.reinject.load(ordering: .sequentiallyConsistent) {
                        reinjection.pending.add(expiries, ordering: .sequentiallyConsistent)
                    }
                    queued = true
                }
            }
            if fds[1].revents != 0 {
                _ = withUnsafeMutableBytes(of: &count) { Glibc.read(reinjection.work, $0.baseAddress, 8) }
                queued = true
            }
            if queued { doWork() }
        }
    }

    /// kvm_free_pit: the timer and thread stop; the VM calls this as it goes.
    func stop() {
        stopping.store(true, ordering: .releasing)
        signalEventFD(reinjection.work)
        if let handle = thread.withLock({ $0 }) { pthread_join(handle, nil) }
        setReinject(false)
    }

    // MARK: Reinjection

    /// kvm_pit_set_reinject, with the PIT's lock held (or as the PIT goes):
    /// the irqchip tells the PIT of GSI 0's acknowledgements and unmasking
    /// only in reinject mode. It takes the irqchip's lock, which is always
    /// taken after the PIT's, never before.
    private func setReinject(_ reinject: Bool) {
        if reinjection.reinject.load(ordering: .sequentiallyConsistent) == reinject { return }
        let owner = ObjectIdentifier(self)
        if reinject {
            reinjection.reset()
            let reinjection = self.reinjection
            irqchip.core.withLock { core in
                core.ackNotifiers.append(IRQAckNotifier(gsi: 0, owner: owner, acked: { reinjection.acked() }))
                core.maskNotifiers.append(IRQMaskNotifier(gsi: 0, owner: owner, changed: { reinjection.maskChanged($0) }))
            }
        } else {
            irqchip.core.withLock { core in
                core.ackNotifiers.removeAll { $0.owner == owner }
                core.maskNotifiers.removeAll { $0.owner == owner }
            }
        }
        reinjection.reinject.store(reinject, ordering: .sequentiallyConsistent)
    }

    // MARK: Ports

    /// Whether the PIT or its speaker device takes an access of `length`
    /// bytes at `port`: it must lie inside the device's registered range
    /// (kvm_io_bus_get_first_dev), and the speaker answers only 0x61.
    func handlesPort(_ port: UInt16, length: Int) -> Bool {
        let end = Int(port) + length
        if port >= KVM_PIT_BASE_ADDRESS && end <= Int(KVM_PIT_BASE_ADDRESS) + KVM_PIT_MEM_LENGTH { return true }
        return hasSpeaker && port == KVM_SPEAKER_BASE_ADDRESS && end <= Int(port) + KVM_SPEAKER_MEM_LENGTH
    }

    /// A guest `out` the PIT takes (pit_ioport_write, speaker_ioport_write):
    /// only the low byte counts.
    func portWrite(_ port: UInt16, value: UInt64) {
        let now = ktime_get()
        state.withLock { s in
            if port == KVM_SPEAKER_BASE_ADDRESS {
                if value & 2 != 0 {
                    s.flags |= UInt32(KVM_PIT_FLAGS_SPEAKER_DATA_ON)
                } else {
                    s.flags &= ~UInt32(KVM_PIT_FLAGS_SPEAKER_DATA_ON)
                }
                s.setGate(2, UInt8(value & 1), now: now)
                return
            }
            let change = s.ioportWrite(Int(port & KVM_PIT_CHANNEL_MASK), value: UInt8(truncatingIfNeeded: value), now: now)
            apply(change, to: &s, now: now)
        }
    }

    /// A guest `in` the PIT takes (pit_ioport_read, speaker_ioport_read):
    /// the value, zero-extended; nil for port 0x43, whose read leaves the
    /// data as it was, as the kernel's does.
    func portRead(_ port: UInt16) -> UInt64? {
        let now = ktime_get()
        return state.withLock { s -> UInt64? in
            if port == KVM_SPEAKER_BASE_ADDRESS {
                // The refresh clock toggles about every 15 us; the kernel takes 2^14 ns.
                let refresh = UInt64((UInt64(bitPattern: now) >> 14) & 1)
                let dataOn: UInt64 = s.flags & UInt32(KVM_PIT_FLAGS_SPEAKER_DATA_ON) != 0 ? 1 : 0
                return dataOn << 1 | UInt64(s.channels[2].gate) | (s.out(2, now: now) ? 1 : 0) << 5 | refresh << 4
            }
            let channel = Int(port & KVM_PIT_CHANNEL_MASK)
            if channel == 3 { return nil }
            return UInt64(s.ioportRead(channel, now: now))
        }
    }

    // MARK: State requests

    /// kvm_vm_ioctl_get_pit2.
    func getState2() -> kvm_pit_state2 {
        state.withLock { s in
            var ps = kvm_pit_state2()
            ps.channels = (s.channels[0].kernelState, s.channels[1].kernelState, s.channels[2].kernelState)
            ps.flags = s.flags
            return ps
        }
    }

    /// kvm_vm_ioctl_set_pit2 (and kvm_vm_ioctl_set_pit with `flags` nil):
    /// the counters as given, then each count loaded again, which restarts
    /// counters 1 and 2 from now and counter 0's timer from its mode.
    func setState(_ channels: (kvm_pit_channel_state, kvm_pit_channel_state, kvm_pit_channel_state), flags: UInt32?) {
        let now = ktime_get()
        state.withLock { s in
            let hpet = UInt32(KVM_PIT_FLAGS_HPET_LEGACY)
            let start = flags.map { s.flags & hpet == 0 && $0 & hpet != 0 } ?? false
            s.channels = [KPITChannelState(channels.0), KPITChannelState(channels.1), KPITChannelState(channels.2)]
            if let flags { s.flags = flags }
            for channel in 0..<3 {
                let change = s.kvmLoadCount(channel, s.channels[channel].count, hpetLegacyStart: start && channel == 0, now: now)
                apply(change, to: &s, now: now)
            }
        }
    }

    /// kvm_vm_ioctl_reinject: any non-zero value turns reinjection on.
    func setReinjectControl(_ reinject: Bool) {
        state.withLock { _ in setReinject(reinject) }
    }
}

/// An irqchip ack notifier (`struct kvm_irq_ack_notifier`): told when the
/// guest ends an interrupt of `gsi` (EOI on the PIC or the IOAPIC's LAPIC).
/// It runs with the irqchip's lock held, so it must not call back into it.
struct IRQAckNotifier: Sendable {
    let gsi: UInt32
    let owner: ObjectIdentifier
    let acked: @Sendable () -> Void
}

/// An irqchip mask notifier (`struct kvm_irq_mask_notifier`): told when the
/// pin `gsi` is routed to is masked or unmasked, under the irqchip's lock.
struct IRQMaskNotifier: Sendable {
    let gsi: UInt32
    let owner: ObjectIdentifier
    let changed: @Sendable (Bool) -> Void
}

extension SoftBackend {
    /// KVM_CREATE_PIT2 (and the legacy KVM_CREATE_PIT, whose config is
    /// always the speaker device): EFAULT for a bad config, EEXIST for a
    /// second PIT, ENOENT without the in-kernel PIC. Unknown flags are accepted.
    func kvm_vm_ioctl_create_pit(_ vm: SoftVM, _ arg: UInt, legacy: Bool) -> Int32 {
        var flags = UInt32(KVM_PIT_SPEAKER_DUMMY)
        if !legacy {
            guard let config = UserMemory.read(kvm_pit_config.self, from: arg) else { return fail(.badAddress) }
            flags = config.flags
        }
        return vm.vcpus.withLock { _ in
            vm.pitSlot.withLock { slot in
                if slot != nil { return fail(.fileExists) }
                guard let irqchip = vm.irqchip else { return fail(.noSuchFileOrDirectory) }
                guard let pit = SoftPIT(irqchip: irqchip, flags: flags) else { return fail(.noMemory) }
                slot = pit
                return 0
            }
        }
    }

    /// KVM_GET_PIT, KVM_SET_PIT, KVM_GET_PIT2, KVM_SET_PIT2 and
    /// KVM_REINJECT_CONTROL, each checking its pointer and the PIT in the
    /// kernel's order.
    func kvm_vm_ioctl_pit(_ vm: SoftVM, _ request: UInt, _ arg: UInt) -> Int32 {
        switch request {
        case KVMRequest.getPIT.number:
            // memdup_user before the PIT check.
            guard UserMemory.read(kvm_pit_state.self, from: arg) != nil else { return fail(.badAddress) }
            guard let pit = vm.pit else { return fail(.noSuchAddressOrDevice) }
            var ps = kvm_pit_state()
            ps.channels = pit.getState2().channels
            return UserMemory.write(ps, to: arg) ? 0 : fail(.badAddress)
        case KVMRequest.setPIT.number:
            guard let ps = UserMemory.read(kvm_pit_state.self, from: arg) else { return fail(.badAddress) }
            guard let pit = vm.pit else { return fail(.noSuchAddressOrDevice) }
            pit.setState(ps.channels, flags: nil)
            return 0
        case KVMRequest.getPIT2.number:
            guard let pit = vm.pit else { return fail(.noSuchAddressOrDevice) }
            return UserMemory.write(pit.getState2(), to: arg) ? 0 : fail(.badAddress)
        case KVMRequest.setPIT2.number:
            guard let ps = UserMemory.read(kvm_pit_state2.self, from: arg) else { return fail(.badAddress) }
            guard let pit = vm.pit else { return fail(.noSuchAddressOrDevice) }
            pit.setState(ps.channels, flags: ps.flags)
            return 0
        case KVMRequest.reinjectControl.number:
            guard let control = UserMemory.read(kvm_reinject_control.self, from: arg) else { return fail(.badAddress) }
            guard let pit = vm.pit else { return fail(.noSuchAddressOrDevice) }
            pit.setReinjectControl(control.pit_reinject != 0)
            return 0
        default:
            return fail(.inappropriateIOCTLForDevice)
        }
    }

    /// kernel_pio for the PIT's ports: true when the PIT or its speaker took
    /// the access. A read of port 0x43, which the PIT does not answer, gives
    /// what the last read left, as the kernel's emulator gives what its read
    /// cache held: SoftKVM keeps reads in the vCPU's pio page.
    func kernel_pio_pit(_ io: PortIOExit, _ arch: inout VCPUArch, _ vcpu: SoftVCPU) -> Bool {
        guard io.port & ~0x3 == KVM_PIT_BASE_ADDRESS || io.port == KVM_SPEAKER_BASE_ADDRESS,
              let pit = vcpu.vm.pit, pit.handlesPort(io.port, length: io.size) else { return false }
        let data = vcpu.mapping + KVM_PIO_PAGE_OFFSET * Int(PAGE_SIZE)
        if io.isWrite {
            pit.portWrite(io.port, value: io.data)
            return true
        }
        if arch.cpu.hasStringInput { return false }
        if let value = pit.portRead(io.port) { Self.storeLittleEndian(value, to: data, size: io.size) }
        arch.cpu.completeInput(Self.littleEndian(data, size: io.size))
        return true
    }
}
