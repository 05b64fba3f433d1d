/// A point in time from the host's clock: seconds since the Unix epoch (UTC)
/// and the nanoseconds into that second.
public struct RTCInstant: Sendable, Equatable {
    public var seconds: Int64
    public var nanoseconds: Int32

    public init(seconds: Int64, nanoseconds: Int32 = 0) {
        self.seconds = seconds
        self.nanoseconds = nanoseconds
    }
}

extension RTCInstant {
    /// Nanoseconds since the epoch.
    var totalNanoseconds: Int64 { seconds * 1_000_000_000 + Int64(nanoseconds) }

    init(totalNanoseconds: Int64) {
        let seconds = totalNanoseconds >= 0 ? totalNanoseconds / 1_000_000_000 : (totalNanoseconds - 999_999_999) / 1_000_000_000
        self.init(seconds: seconds, nanoseconds: Int32(totalNanoseconds - seconds * 1_000_000_000))
    }
}

/// A Motorola MC146818 real-time clock with its CMOS RAM: the index port
/// (offset 0, port 0x70; bit 7 masks NMI) and the data port (offset 1, port
/// 0x71). Time comes from the injected `clock`, shown in BCD or binary and
/// in 12- or 24-hour form as register B asks; a time the guest sets is kept
/// as an offset from that clock.
///
/// Its interrupt (IRQ 8) follows register C as on the MC146818: the
/// periodic flag (PF) at the rate register A selects, the update-ended flag
/// (UF) once a second, the alarm flag (AF) when the time matches the alarm
/// registers (a value of 0xc0 or above matches any); each sets IRQF, and
/// raises the line, when register B enables it. Reading register C clears
/// the flags and lowers the line. The flags are brought up to the clock at
/// every access and at `update()`, which the machine calls at
/// `nextEventTime`, so that an enabled interrupt comes on time.
public final class CMOSRTC {
    public static let indexOffset = 0
    public static let dataOffset = 1

    public static let seconds: UInt8 = 0x00
    public static let minutes: UInt8 = 0x02
    public static let hours: UInt8 = 0x04
    public static let dayOfWeek: UInt8 = 0x06
    public static let dayOfMonth: UInt8 = 0x07
    public static let month: UInt8 = 0x08
    public static let year: UInt8 = 0x09
    public static let registerA: UInt8 = 0x0a
    public static let registerB: UInt8 = 0x0b
    public static let registerC: UInt8 = 0x0c
    public static let registerD: UInt8 = 0x0d
    /// The century byte, where the FADT's CENTURY field points.
    public static let century: UInt8 = 0x32

    public static let secondsAlarm: UInt8 = 0x01
    public static let minutesAlarm: UInt8 = 0x03
    public static let hoursAlarm: UInt8 = 0x05

    public static let aUpdateInProgress: UInt8 = 0x80
    public static let bSet: UInt8 = 0x80
    public static let bPeriodicInterruptEnable: UInt8 = 0x40
    public static let bAlarmInterruptEnable: UInt8 = 0x20
    public static let bUpdateEndedInterruptEnable: UInt8 = 0x10
    public static let cInterruptRequest: UInt8 = 0x80
    public static let cPeriodic: UInt8 = 0x40
    public static let cAlarm: UInt8 = 0x20
    public static let cUpdateEnded: UInt8 = 0x10
    public static let bBinary: UInt8 = 0x04
    public static let b24Hour: UInt8 = 0x02
    public static let dValidRAM: UInt8 = 0x80
    public static let hourPM: UInt8 = 0x80

    /// The update cycle: UIP is set this long before each second begins.
    static let updateInProgressNanoseconds: Int32 = 244_000

    private let clock: () -> RTCInstant
    private var ram = [UInt8](repeating: 0, count: 128)
    private var index: UInt8 = 0
    /// NMI masked (bit 7 of the last index write); the VMM reads it.
    public private(set) var nmiMasked = false
    /// Seconds added to the host clock: what the guest set minus what the clock said.
    private var offset: Int64 = 0
    /// With SET in register B the clock stops at this time while the guest writes.
    private var frozen: Int64?
    private let interrupt: (Bool) -> Void
    /// The IRQ line as last driven.
    private var level = false
    /// The clock time (ns since the epoch) the flags have been brought up to.
    private var evaluated: Int64

    /// `interrupt` drives IRQ 8: high while IRQF is set.
    public init(clock: @escaping () -> RTCInstant, interrupt: @escaping (Bool) -> Void = { _ in }) {
        self.clock = clock
        self.interrupt = interrupt
        evaluated = clock().totalNanoseconds
        ram[Int(Self.registerA)] = 0x26  // 32.768 kHz time base, 1024 Hz rate
        ram[Int(Self.registerB)] = Self.b24Hour
        ram[Int(Self.registerD)] = Self.dValidRAM
    }

    public func read(offset: Int) -> UInt8 {
        guard offset == Self.dataOffset else { return 0xff }
        update()
        switch index {
        case Self.seconds, Self.minutes, Self.hours, Self.dayOfWeek, Self.dayOfMonth, Self.month, Self.year,
             Self.century:
            return encoded(field: index, of: CivilTime(epochSeconds: currentSeconds))
        case Self.registerA:
            let now = clock()
            let updating = frozen == nil && now.nanoseconds >= 1_000_000_000 - Self.updateInProgressNanoseconds
            return ram[Int(index)] & 0x7f | (updating ? Self.aUpdateInProgress : 0)
        case Self.registerC:
            let flags = ram[Int(index)]
            ram[Int(index)] = 0
            driveInterrupt()
            return flags
        default:
            return ram[Int(index)]
        }
    }

    public func write(offset: Int, value: UInt8) {
        switch offset {
        case Self.indexOffset:
            nmiMasked = value & 0x80 != 0
            index = value & 0x7f
        case Self.dataOffset:
            update()
            writeData(value)
            driveInterrupt()
        default:
            break
        }
    }

    private var currentSeconds: Int64 { frozen ?? clock().seconds + offset }

    private func writeData(_ value: UInt8) {
        switch index {
        case Self.seconds, Self.minutes, Self.hours, Self.dayOfWeek, Self.dayOfMonth, Self.month, Self.year,
             Self.century:
            var time = CivilTime(epochSeconds: currentSeconds)
            time.set(field: index, to: decoded(field: index, value))
            setTime(time.epochSeconds)
        case Self.registerA:
            ram[Int(index)] = value & 0x7f
        case Self.registerB:
            let wasSet = ram[Int(index)] & Self.bSet != 0
            // Setting SET ends update-ended interrupts (UIE is cleared), as on the MC146818.
            ram[Int(index)] = value & Self.bSet != 0 ? value & ~Self.bUpdateEndedInterruptEnable : value
            let isSet = value & Self.bSet != 0
            if isSet, !wasSet {
                frozen = currentSeconds
            } else if !isSet, wasSet, let stopped = frozen {
                frozen = nil
                setTime(stopped)
            }
        case Self.registerC, Self.registerD:
            break  // read-only
        default:
            ram[Int(index)] = value
        }
    }

    // MARK: Interrupts

    /// The divider runs (register A's DV bits select a time base, not a
    /// reset): the periodic rate and the update cycle need it.
    private var dividerRunning: Bool { ram[Int(Self.registerA)] & 0x70 <= 0x20 }
    /// The clock updates once a second: the divider runs and SET is clear.
    private var updating: Bool { dividerRunning && ram[Int(Self.registerB)] & Self.bSet == 0 }

    /// The periodic rate as a shift: the period is 2^shift cycles of the
    /// 32.768 kHz time base; rate select n gives 32768 Hz >> (n - 1), with
    /// 1 and 2 the same as 8 and 9 (256 and 128 Hz). nil for none.
    var periodShift: Int? {
        let select = Int(ram[Int(Self.registerA)] & 0x0f)
        guard dividerRunning, select != 0 else { return nil }
        return (select <= 2 ? select + 7 : select) - 1
    }

    /// Cycles of the 32.768 kHz time base since the epoch at `nanoseconds`
    /// (a clock before the epoch counts from it).
    static func timeBaseCycles(at nanoseconds: Int64) -> UInt64 {
        let (high, low) = UInt64(max(nanoseconds, 0)).multipliedFullWidth(by: 32768)
        return UInt64(1_000_000_000).dividingFullWidth((high, low)).quotient
    }

    /// The first nanosecond at which `cycles` cycles of the time base have passed.
    static func nanoseconds(atCycle cycles: UInt64) -> Int64 {
        let (high, low) = cycles.multipliedFullWidth(by: 1_000_000_000)
        let (quotient, remainder) = UInt64(32768).dividingFullWidth((high, low))
        return Int64(quotient + (remainder == 0 ? 0 : 1))
    }

    /// Brings the flags of register C up to the clock: PF for each periodic
    /// edge passed, UF and a matching alarm for each second the clock turned.
    public func update() {
        let now = clock().totalNanoseconds
        let from = evaluated
        guard now > from else { return }
        evaluated = now
        var flags = ram[Int(Self.registerC)]
        if let shift = periodShift, Self.timeBaseCycles(at: now) >> shift > Self.timeBaseCycles(at: from) >> shift {
            flags |= Self.cPeriodic
        }
        if updating {
            let first = floorDivide(from, 1_000_000_000) + 1
            let last = floorDivide(now, 1_000_000_000)
            if last >= first {
                flags |= Self.cUpdateEnded
                // Every time of day comes once a day: a day's worth of seconds is enough to look at.
                for second in max(first, last - 86_399)...last where alarmMatches(at: second + offset) {
                    flags |= Self.cAlarm
                    break
                }
            }
        }
        ram[Int(Self.registerC)] = flags
        driveInterrupt()
    }

    /// When the next enabled interrupt is due (on the injected clock), or
    /// nil while none is enabled or the line is already high (until the
    /// guest reads register C).
    public var nextEventTime: RTCInstant? {
        if level { return nil }
        let enabled = ram[Int(Self.registerB)]
        var next: Int64?
        if enabled & Self.bPeriodicInterruptEnable != 0, let shift = periodShift {
            next = Self.nanoseconds(atCycle: (Self.timeBaseCycles(at: evaluated) >> shift + 1) << shift)
        }
        if enabled & (Self.bUpdateEndedInterruptEnable | Self.bAlarmInterruptEnable) != 0, updating {
            let second = (floorDivide(evaluated, 1_000_000_000) + 1) * 1_000_000_000
            next = min(next ?? second, second)
        }
        return next.map { RTCInstant(totalNanoseconds: $0) }
    }

    /// Whether the alarm registers match the time shown at `seconds`.
    private func alarmMatches(at seconds: Int64) -> Bool {
        let time = CivilTime(epochSeconds: seconds)
        for (alarm, field) in [(Self.secondsAlarm, Self.seconds), (Self.minutesAlarm, Self.minutes), (Self.hoursAlarm, Self.hours)] {
            let wanted = ram[Int(alarm)]
            if wanted >= 0xc0 { continue }  // Don't care.
            if wanted != encoded(field: field, of: time) { return false }
        }
        return true
    }

    /// IRQF is set while an enabled flag is; the line follows it.
    private func driveInterrupt() {
        var flags = ram[Int(Self.registerC)]
        let asserted = flags & ram[Int(Self.registerB)] & (Self.cPeriodic | Self.cAlarm | Self.cUpdateEnded) != 0
        if asserted { flags |= Self.cInterruptRequest } else { flags &= ~Self.cInterruptRequest }
        ram[Int(Self.registerC)] = flags
        if asserted != level {
            level = asserted
            interrupt(asserted)
        }
    }

    private func floorDivide(_ a: Int64, _ b: Int64) -> Int64 {
        a >= 0 ? a / b : (a - b + 1) / b
    }

    private func setTime(_ seconds: Int64) {
        if frozen != nil {
            frozen = seconds
        } else {
            offset = seconds - clock().seconds
        }
    }

    private var binary: Bool { ram[Int(Self.registerB)] & Self.bBinary != 0 }
    private var twentyFourHour: Bool { ram[Int(Self.registerB)] & Self.b24Hour != 0 }

    private func encoded(field: UInt8, of time: CivilTime) -> UInt8 {
        var value = time.value(of: field)
        var pm = false
        if field == Self.hours, !twentyFourHour {
            pm = value >= 12
            value = value % 12 == 0 ? 12 : value % 12
        }
        let digits = binary ? UInt8(value) : UInt8((value / 10) << 4 | value % 10)
        return pm ? digits | Self.hourPM : digits
    }

    private func decoded(field: UInt8, _ raw: UInt8) -> Int {
        var byte = raw
        let pm = field == Self.hours && !twentyFourHour && byte & Self.hourPM != 0
        if field == Self.hours, !twentyFourHour { byte &= 0x7f }
        var value = binary ? Int(byte) : Int(byte >> 4) * 10 + Int(byte & 0x0f)
        if field == Self.hours, !twentyFourHour {
            value = value % 12 + (pm ? 12 : 0)
        }
        return value
    }
}

/// A UTC calendar time, converted to and from Unix seconds with Howard
/// Hinnant's days-from-civil algorithm (proleptic Gregorian).
struct CivilTime {
    var year: Int
    var month: Int
    var day: Int
    var hour: Int
    var minute: Int
    var second: Int

    init(epochSeconds: Int64) {
        let days = Int(epochSeconds >= 0 ? epochSeconds / 86400 : (epochSeconds - 86399) / 86400)
        let secondsOfDay = Int(epochSeconds - Int64(days) * 86400)
        hour = secondsOfDay / 3600
        minute = secondsOfDay / 60 % 60
        second = secondsOfDay % 60
        let shifted = days + 719_468
        let era = (shifted >= 0 ? shifted : shifted - 146_096) / 146_097
        let dayOfEra = shifted - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let monthIndex = (5 * dayOfYear + 2) / 153
        day = dayOfYear - (153 * monthIndex + 2) / 5 + 1
        month = monthIndex < 10 ? monthIndex + 3 : monthIndex - 9
        year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
    }

    var epochSeconds: Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        let days = era * 146_097 + dayOfEra - 719_468
        return Int64(days) * 86400 + Int64(hour * 3600 + minute * 60 + second)
    }

    /// 1 (Sunday) to 7 (Saturday), as the MC146818 counts; 1970-01-01 was a Thursday.
    var dayOfWeek: Int {
        let days = Int((epochSeconds - Int64(hour * 3600 + minute * 60 + second)) / 86400)
        return ((days + 4) % 7 + 7) % 7 + 1
    }

    func value(of field: UInt8) -> Int {
        switch field {
        case CMOSRTC.seconds: second
        case CMOSRTC.minutes: minute
        case CMOSRTC.hours: hour
        case CMOSRTC.dayOfWeek: dayOfWeek
        case CMOSRTC.dayOfMonth: day
        case CMOSRTC.month: month
        case CMOSRTC.year: year % 100
        case CMOSRTC.century: year / 100
        default: 0
        }
    }

    /// Sets one field; the day of week follows from the date, so writing it does nothing.
    mutating func set(field: UInt8, to value: Int) {
        switch field {
        case CMOSRTC.seconds: second = value
        case CMOSRTC.minutes: minute = value
        case CMOSRTC.hours: hour = value
        case CMOSRTC.dayOfMonth: day = value
        case CMOSRTC.month: month = value
        case CMOSRTC.year: year = year / 100 * 100 + value
        case CMOSRTC.century: year = value * 100 + year % 100
        default: break
        }
    }
}
