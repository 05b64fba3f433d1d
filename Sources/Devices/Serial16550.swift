/// A National Semiconductor 16550A UART: the eight registers at its base
/// port, the 16-byte receive FIFO the host fills, and the interrupt
/// identification logic. Transmitted bytes go to `output`; the interrupt
/// line's level goes to `interrupt` whenever it changes.
///
/// Time is not modelled: a transmitted byte leaves at once (the transmitter
/// is always empty again after a write), and a received burst that stays
/// below the FIFO trigger level raises the character-timeout interrupt at
/// once, as the line going idle after the burst would.
public final class Serial16550 {
    // Register offsets.
    public static let dataOffset = 0  // RBR / THR, or DLL with DLAB
    public static let interruptEnableOffset = 1  // IER, or DLM with DLAB
    public static let interruptIdentificationOffset = 2  // IIR on read, FCR on write
    public static let lineControlOffset = 3
    public static let modemControlOffset = 4
    public static let lineStatusOffset = 5
    public static let modemStatusOffset = 6
    public static let scratchOffset = 7

    // IER bits.
    public static let ierReceivedData: UInt8 = 0x01
    public static let ierTransmitterEmpty: UInt8 = 0x02
    public static let ierLineStatus: UInt8 = 0x04
    public static let ierModemStatus: UInt8 = 0x08

    // IIR values (bit 0 clear: an interrupt is pending).
    public static let iirNoInterrupt: UInt8 = 0x01
    public static let iirModemStatus: UInt8 = 0x00
    public static let iirTransmitterEmpty: UInt8 = 0x02
    public static let iirReceivedData: UInt8 = 0x04
    public static let iirLineStatus: UInt8 = 0x06
    public static let iirCharacterTimeout: UInt8 = 0x0c
    /// Bits 6-7 set: the FIFOs are enabled (a 16550A; a 16550 sets only bit 7).
    public static let iirFIFOsEnabled: UInt8 = 0xc0

    // FCR bits.
    public static let fcrEnable: UInt8 = 0x01
    public static let fcrClearReceive: UInt8 = 0x02
    public static let fcrClearTransmit: UInt8 = 0x04

    public static let lcrDivisorLatchAccess: UInt8 = 0x80

    // MCR bits.
    public static let mcrDTR: UInt8 = 0x01
    public static let mcrRTS: UInt8 = 0x02
    public static let mcrOut1: UInt8 = 0x04
    public static let mcrOut2: UInt8 = 0x08
    public static let mcrLoopback: UInt8 = 0x10

    // LSR bits.
    public static let lsrDataReady: UInt8 = 0x01
    public static let lsrOverrun: UInt8 = 0x02
    public static let lsrBreak: UInt8 = 0x10
    public static let lsrTransmitterHoldingEmpty: UInt8 = 0x20
    public static let lsrTransmitterEmpty: UInt8 = 0x40

    // MSR bits.
    public static let msrCTS: UInt8 = 0x10
    public static let msrDSR: UInt8 = 0x20
    public static let msrRI: UInt8 = 0x40
    public static let msrDCD: UInt8 = 0x80

    public static let fifoSize = 16
    static let triggerLevels = [1, 4, 8, 14]

    private let interrupt: (Bool) -> Void
    private let output: (UInt8) -> Void

    private var receiveFIFO: [UInt8] = []
    private var interruptEnable: UInt8 = 0
    private var fifoControl: UInt8 = 0
    private var lineControl: UInt8 = 0x03
    private var modemControl: UInt8 = 0
    private var lineStatusErrors: UInt8 = 0
    private var modemStatusDeltas: UInt8 = 0
    /// The modem inputs (CTS, DSR, RI, DCD) as the host side drives them.
    private var modemInputs: UInt8
    private var scratch: UInt8 = 0
    private var divisor: UInt16 = 0x0c
    private var transmitterEmptyPending = false
    private var timeoutPending = false
    private var interruptLevel = false

    /// A UART at reset; `modemInputs` are the MSR status bits the host side
    /// asserts outside loopback (carrier, data set ready and clear to send:
    /// a terminal is attached).
    public init(modemInputs: UInt8 = msrDCD | msrDSR | msrCTS,
                interrupt: @escaping (Bool) -> Void, output: @escaping (UInt8) -> Void) {
        self.modemInputs = modemInputs & 0xf0
        self.interrupt = interrupt
        self.output = output
    }

    private var divisorLatchAccess: Bool { lineControl & Self.lcrDivisorLatchAccess != 0 }
    private var loopback: Bool { modemControl & Self.mcrLoopback != 0 }
    private var fifoEnabled: Bool { fifoControl & Self.fcrEnable != 0 }
    private var receiveCapacity: Int { fifoEnabled ? Self.fifoSize : 1 }
    private var triggerLevel: Int { fifoEnabled ? Self.triggerLevels[Int(fifoControl >> 6)] : 1 }

    /// The divisor latch: the baud rate is 115200 / divisor.
    public var divisorLatch: UInt16 { divisor }

    /// Room in the receive FIFO, for a host that wants to avoid overruns.
    public var receiveSpace: Int { loopback ? 0 : receiveCapacity - receiveFIFO.count }

    /// Bytes from the host side of the line. Bytes past the FIFO's capacity
    /// are lost and set the overrun error, as on the wire. In loopback the
    /// line is disconnected and the bytes are dropped.
    public func receive(_ bytes: some Sequence<UInt8>) {
        guard !loopback else { return }
        for byte in bytes { enqueue(byte) }
        updateInterrupt()
    }

    private func enqueue(_ byte: UInt8) {
        if receiveFIFO.count < receiveCapacity {
            receiveFIFO.append(byte)
        } else {
            lineStatusErrors |= Self.lsrOverrun
        }
        timeoutPending = fifoEnabled && receiveFIFO.count < triggerLevel
    }

    public func read(offset: Int) -> UInt8 {
        switch offset {
        case Self.dataOffset:
            if divisorLatchAccess { return UInt8(truncatingIfNeeded: divisor) }
            guard !receiveFIFO.isEmpty else { return 0 }
            let byte = receiveFIFO.removeFirst()
            timeoutPending = false
            updateInterrupt()
            return byte
        case Self.interruptEnableOffset:
            return divisorLatchAccess ? UInt8(truncatingIfNeeded: divisor >> 8) : interruptEnable
        case Self.interruptIdentificationOffset:
            let identification = pendingInterrupt
            // Reading the IIR acknowledges a transmitter-empty interrupt it reports.
            if identification == Self.iirTransmitterEmpty {
                transmitterEmptyPending = false
                updateInterrupt()
            }
            return identification | (fifoEnabled ? Self.iirFIFOsEnabled : 0)
        case Self.lineControlOffset:
            return lineControl
        case Self.modemControlOffset:
            return modemControl
        case Self.lineStatusOffset:
            let status = lineStatus
            lineStatusErrors = 0
            updateInterrupt()
            return status
        case Self.modemStatusOffset:
            let status = modemStatusLines | modemStatusDeltas
            modemStatusDeltas = 0
            updateInterrupt()
            return status
        case Self.scratchOffset:
            return scratch
        default:
            return 0xff
        }
    }

    public func write(offset: Int, value: UInt8) {
        switch offset {
        case Self.dataOffset:
            if divisorLatchAccess {
                divisor = divisor & 0xff00 | UInt16(value)
                return
            }
            if loopback {
                enqueue(value)
            } else {
                output(value)
            }
            // The byte left at once, so the holding register is empty again.
            transmitterEmptyPending = true
        case Self.interruptEnableOffset:
            if divisorLatchAccess {
                divisor = divisor & 0x00ff | UInt16(value) << 8
                return
            }
            let enablingTransmitter = value & Self.ierTransmitterEmpty != 0
                && interruptEnable & Self.ierTransmitterEmpty == 0
            interruptEnable = value & 0x0f
            // The holding register is always empty, so enabling its
            // interrupt raises it (Linux's THRE test relies on this).
            if enablingTransmitter { transmitterEmptyPending = true }
        case Self.interruptIdentificationOffset:
            writeFIFOControl(value)
        case Self.lineControlOffset:
            lineControl = value
        case Self.modemControlOffset:
            let before = modemStatusLines
            modemControl = value & 0x1f
            noteModemChange(from: before)
        case Self.scratchOffset:
            scratch = value
        default:
            break  // LSR and MSR are read-only.
        }
        updateInterrupt()
    }

    /// Sets the modem status inputs the host side drives (MSR bits 4-7).
    public func setModemInputs(_ inputs: UInt8) {
        let before = modemStatusLines
        modemInputs = inputs & 0xf0
        noteModemChange(from: before)
        updateInterrupt()
    }

    private func writeFIFOControl(_ value: UInt8) {
        let enable = value & Self.fcrEnable != 0
        // Turning the FIFOs on or off empties them.
        if enable != fifoEnabled || value & Self.fcrClearReceive != 0 {
            receiveFIFO.removeAll()
            timeoutPending = false
        }
        fifoControl = enable ? value & 0xc9 : 0
    }

    private var lineStatus: UInt8 {
        var status = lineStatusErrors | Self.lsrTransmitterHoldingEmpty | Self.lsrTransmitterEmpty
        if !receiveFIFO.isEmpty { status |= Self.lsrDataReady }
        return status
    }

    /// MSR bits 4-7: in loopback, the modem outputs fed back (RTS->CTS,
    /// DTR->DSR, OUT1->RI, OUT2->DCD); otherwise the host's inputs.
    private var modemStatusLines: UInt8 {
        guard loopback else { return modemInputs }
        var lines: UInt8 = 0
        if modemControl & Self.mcrRTS != 0 { lines |= Self.msrCTS }
        if modemControl & Self.mcrDTR != 0 { lines |= Self.msrDSR }
        if modemControl & Self.mcrOut1 != 0 { lines |= Self.msrRI }
        if modemControl & Self.mcrOut2 != 0 { lines |= Self.msrDCD }
        return lines
    }

    private func noteModemChange(from before: UInt8) {
        let after = modemStatusLines
        let changed = before ^ after
        var deltas: UInt8 = 0
        if changed & Self.msrCTS != 0 { deltas |= 0x01 }
        if changed & Self.msrDSR != 0 { deltas |= 0x02 }
        // TERI: RI went from on to off.
        if before & Self.msrRI != 0, after & Self.msrRI == 0 { deltas |= 0x04 }
        if changed & Self.msrDCD != 0 { deltas |= 0x08 }
        modemStatusDeltas |= deltas
    }

    /// The highest-priority pending interrupt's IIR code, or "none".
    private var pendingInterrupt: UInt8 {
        if interruptEnable & Self.ierLineStatus != 0, lineStatusErrors != 0 {
            return Self.iirLineStatus
        }
        if interruptEnable & Self.ierReceivedData != 0, !receiveFIFO.isEmpty {
            if receiveFIFO.count >= triggerLevel { return Self.iirReceivedData }
            if timeoutPending { return Self.iirCharacterTimeout }
        }
        if interruptEnable & Self.ierTransmitterEmpty != 0, transmitterEmptyPending {
            return Self.iirTransmitterEmpty
        }
        if interruptEnable & Self.ierModemStatus != 0, modemStatusDeltas != 0 {
            return Self.iirModemStatus
        }
        return Self.iirNoInterrupt
    }

    private func updateInterrupt() {
        // The line follows the sources in loopback too: the 16550's
        // diagnostic mode keeps its interrupts working, and QEMU's does the same.
        let level = pendingInterrupt != Self.iirNoInterrupt
        if level != interruptLevel {
            interruptLevel = level
            interrupt(level)
        }
    }
}
