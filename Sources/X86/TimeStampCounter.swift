#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// The time-stamp counter: RDTSC, RDTSCP and the TSC MSRs. The counter is
// the host's monotonic clock scaled to the guest's frequency plus an
// offset, as KVM's is the host TSC scaled and offset: it runs while the
// guest does not, at a rate that does not depend on how fast the CPU
// emulates instructions, which is what makes it a clock a guest can
// calibrate against.

/// The TSC of one CPU and the MSRs that go with it (IA32_TSC_ADJUST, IA32_TSC_AUX).
public struct TimeStampCounter: Hashable, Sendable {
    /// What the counter counts at when nobody says otherwise.
    public static let defaultKilohertz: UInt32 = 2_000_000

    /// Cycles per millisecond of host time.
    public var kilohertz: UInt32
    /// Added to the scaled host clock (wrapping): the value the counter
    /// would have had at host time 0.
    public var offset: UInt64
    /// IA32_TSC_ADJUST: follows every change the guest makes to the counter.
    public var adjust: UInt64 = 0
    /// IA32_TSC_AUX, which RDTSCP returns in ECX (guests keep their CPU number there).
    public var aux: UInt32 = 0

    public init(kilohertz: UInt32 = TimeStampCounter.defaultKilohertz, offset: UInt64 = 0) {
        self.kilohertz = max(kilohertz, 1)
        self.offset = offset
    }

    /// The host's monotonic clock in nanoseconds, the time base of every
    /// counter and timer of a CPU.
    @inline(__always)
    public static func hostNanoseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) &* 1_000_000_000 &+ UInt64(now.tv_nsec)
    }

    /// `nanoseconds` of host time in cycles of this counter.
    @inline(__always)
    public func cycles(nanoseconds: UInt64) -> UInt64 {
        let product = nanoseconds.multipliedFullWidth(by: UInt64(kilohertz))
        // Below 1_000_000 * 2^64 as long as the product's high word is, which
        // a nanosecond count of 584 years at 1 GHz still keeps.
        guard product.high < 1_000_000 else { return .max }
        return UInt64(1_000_000).dividingFullWidth(product).quotient
    }

    /// `cycles` of this counter in host nanoseconds.
    public func nanoseconds(cycles: UInt64) -> UInt64 {
        let product = cycles.multipliedFullWidth(by: 1_000_000)
        guard product.high < UInt64(kilohertz) else { return .max }
        return UInt64(kilohertz).dividingFullWidth(product).quotient
    }

    /// The counter at host time `hostNanoseconds`.
    @inline(__always)
    public func value(atHostNanoseconds hostNanoseconds: UInt64) -> UInt64 {
        cycles(nanoseconds: hostNanoseconds) &+ offset
    }

    /// The counter now.
    public func read() -> UInt64 { value(atHostNanoseconds: Self.hostNanoseconds()) }

    /// The offset that makes the counter read `value` at host time `hostNanoseconds`.
    public func offset(toRead value: UInt64, atHostNanoseconds hostNanoseconds: UInt64) -> UInt64 {
        value &- cycles(nanoseconds: hostNanoseconds)
    }

    /// A new frequency, the count going on from where it is now rather than jumping.
    public mutating func setKilohertz(_ kilohertz: UInt32, atHostNanoseconds now: UInt64) {
        let current = value(atHostNanoseconds: now)
        self.kilohertz = max(kilohertz, 1)
        offset = offset(toRead: current, atHostNanoseconds: now)
    }

    /// WRMSR IA32_TSC from the guest: IA32_TSC_ADJUST moves by as much as the counter (Intel SDM 17.17.3).
    public mutating func guestWrite(_ value: UInt64) {
        let newOffset = offset(toRead: value, atHostNanoseconds: Self.hostNanoseconds())
        adjust &+= newOffset &- offset
        offset = newOffset
    }

    /// WRMSR IA32_TSC_ADJUST from the guest: the counter moves by the change.
    public mutating func guestWriteAdjust(_ value: UInt64) {
        offset &+= value &- adjust
        adjust = value
    }
}

extension X86CPU {
    /// RDTSC and RDTSCP fault at CPL > 0 when CR4.TSD is set.
    mutating func timeStampReadAllowed() -> Bool {
        state.cr4 & (1 << 2) == 0 || state.privilegeLevel() == 0
    }

    /// 0F 31 RDTSC: the counter in EDX:EAX.
    mutating func executeRDTSC(_ insn: inout Instruction) -> Bool {
        guard timeStampReadAllowed() else { return fault(.gp, errorCode: 0) }
        let value = tsc.read()
        state.setReg(0, value & 0xFFFF_FFFF)
        state.setReg(2, value >> 32)
        state.rip = insn.nextRIP
        return true
    }

    /// 0F 01 F9 RDTSCP: the counter in EDX:EAX and IA32_TSC_AUX in ECX.
    mutating func executeRDTSCP(_ insn: inout Instruction) -> Bool {
        guard timeStampReadAllowed() else { return fault(.gp, errorCode: 0) }
        let value = tsc.read()
        state.setReg(0, value & 0xFFFF_FFFF)
        state.setReg(2, value >> 32)
        state.setReg(1, UInt64(tsc.aux))
        state.rip = insn.nextRIP
        return true
    }
}
