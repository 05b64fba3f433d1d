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

/// A Motorola MC146818 real-time clock with its CMOS RAM: the index port
/// (offset 0, port 0x70; bit 7 masks NMI) and the data port (offset 1, port
/// 0x71). Time comes from the injected `clock`, shown in BCD or binary and
/// in 12- or 24-hour form as register B asks; a time the guest sets is kept
/// as an offset from that clock. Alarm, periodic and update interrupts are
/// not generated.
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

    public static let aUpdateInProgress: UInt8 = 0x80
    public static let bSet: UInt8 = 0x80
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

    public init(clock: @escaping () -> RTCInstant) {
        self.clock = clock
        ram[Int(Self.registerA)] = 0x26  // 32.768 kHz time base, 1024 Hz rate
        ram[Int(Self.registerB)] = Self.b24Hour
        ram[Int(Self.registerD)] = Self.dValidRAM
    }

    public func read(offset: Int) -> UInt8 {
        guard offset == Self.dataOffset else { return 0xff }
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
            writeData(value)
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
            ram[Int(index)] = value
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
