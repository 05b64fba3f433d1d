/// An Intel 8042 keyboard controller, as much of it as Linux uses: the
/// data port (offset 0, port 0x60) and the status/command port (offset 4,
/// port 0x64), the command byte, the controller and port self-tests, a
/// keyboard that acknowledges what it is sent, and the CPU reset line,
/// reported through `reset` (command 0xFE, or an output-port write with
/// bit 0 clear). There is no mouse: a byte sent to the auxiliary device
/// (command 0xD4) is answered as a controller with nothing on that port
/// answers, with 0xFE and the timeout bit, so that a driver's probe fails at
/// once instead of waiting out its timeouts (psmouse's reset waits 4 s).
public final class I8042 {
    public static let dataOffset = 0
    public static let commandOffset = 4

    // Status register bits.
    public static let statusOutputFull: UInt8 = 0x01
    public static let statusInputFull: UInt8 = 0x02
    public static let statusSystem: UInt8 = 0x04
    public static let statusCommand: UInt8 = 0x08
    public static let statusUnlocked: UInt8 = 0x10
    public static let statusAuxOutputFull: UInt8 = 0x20
    public static let statusTimeout: UInt8 = 0x40

    // Command byte bits.
    public static let commandByteKeyboardInterrupt: UInt8 = 0x01
    public static let commandByteAuxInterrupt: UInt8 = 0x02
    public static let commandByteSystem: UInt8 = 0x04
    public static let commandByteKeyboardDisabled: UInt8 = 0x10
    public static let commandByteAuxDisabled: UInt8 = 0x20

    // Controller commands.
    public static let readCommandByte: UInt8 = 0x20
    public static let writeCommandByte: UInt8 = 0x60
    public static let disableAux: UInt8 = 0xa7
    public static let enableAux: UInt8 = 0xa8
    public static let testAux: UInt8 = 0xa9
    public static let selfTest: UInt8 = 0xaa
    public static let testKeyboard: UInt8 = 0xab
    public static let disableKeyboard: UInt8 = 0xad
    public static let enableKeyboard: UInt8 = 0xae
    public static let readOutputPort: UInt8 = 0xd0
    public static let writeOutputPort: UInt8 = 0xd1
    public static let writeKeyboardOutput: UInt8 = 0xd2
    public static let writeAuxOutput: UInt8 = 0xd3
    public static let writeAux: UInt8 = 0xd4
    public static let pulseReset: UInt8 = 0xfe

    public static let selfTestPassed: UInt8 = 0x55
    /// What the controller reads back when a byte for a device got no answer.
    public static let auxTransmitTimeout: UInt8 = 0xfe

    private let keyboardInterrupt: (Bool) -> Void
    private let auxInterrupt: (Bool) -> Void
    private let reset: () -> Void

    /// Bytes waiting for the CPU, each marked with whether it came from the
    /// aux port and whether it reports a transmit timeout.
    private var outputQueue: [(byte: UInt8, aux: Bool, timeout: Bool)] = []
    private var commandByte: UInt8 = 0x45  // keyboard interrupt, system flag, scan-code translation
    private var outputPort: UInt8 = 0x03  // A20 on, reset line high (inactive)
    /// The controller command whose parameter byte the next data write is.
    private var pendingCommand: UInt8?
    /// A keyboard command waiting for its parameter (set LEDs, typematic rate).
    private var keyboardAwaitsParameter = false
    private var lastWriteWasCommand = false
    private var keyboardLevel = false
    private var auxLevel = false

    public init(keyboardInterrupt: @escaping (Bool) -> Void = { _ in },
                auxInterrupt: @escaping (Bool) -> Void = { _ in },
                reset: @escaping () -> Void) {
        self.keyboardInterrupt = keyboardInterrupt
        self.auxInterrupt = auxInterrupt
        self.reset = reset
    }

    public var status: UInt8 {
        var status = Self.statusUnlocked
        if commandByte & Self.commandByteSystem != 0 { status |= Self.statusSystem }
        if lastWriteWasCommand { status |= Self.statusCommand }
        if let first = outputQueue.first {
            status |= Self.statusOutputFull
            if first.aux { status |= Self.statusAuxOutputFull }
            if first.timeout { status |= Self.statusTimeout }
        }
        return status
    }

    public func read(offset: Int) -> UInt8 {
        switch offset {
        case Self.dataOffset:
            guard !outputQueue.isEmpty else { return 0 }
            let byte = outputQueue.removeFirst().byte
            updateInterrupts()
            return byte
        case Self.commandOffset:
            return status
        default:
            return 0xff
        }
    }

    public func write(offset: Int, value: UInt8) {
        switch offset {
        case Self.dataOffset:
            lastWriteWasCommand = false
            writeData(value)
        case Self.commandOffset:
            lastWriteWasCommand = true
            command(value)
        default:
            break
        }
        updateInterrupts()
    }

    /// A key's scan code from the host, queued for the guest.
    public func keyboardInput(_ bytes: some Sequence<UInt8>) {
        for byte in bytes { outputQueue.append((byte, false, false)) }
        updateInterrupts()
    }

    private func command(_ value: UInt8) {
        pendingCommand = nil
        switch value {
        case Self.readCommandByte:
            respond(commandByte)
        case Self.writeCommandByte, Self.writeOutputPort, Self.writeKeyboardOutput,
             Self.writeAuxOutput, Self.writeAux:
            pendingCommand = value
        case Self.disableAux:
            commandByte |= Self.commandByteAuxDisabled
        case Self.enableAux:
            commandByte &= ~Self.commandByteAuxDisabled
        case Self.testAux, Self.testKeyboard:
            respond(0x00)
        case Self.selfTest:
            commandByte |= Self.commandByteSystem
            respond(Self.selfTestPassed)
        case Self.disableKeyboard:
            commandByte |= Self.commandByteKeyboardDisabled
        case Self.enableKeyboard:
            commandByte &= ~Self.commandByteKeyboardDisabled
        case Self.readOutputPort:
            respond(outputPort)
        case Self.pulseReset:
            reset()
        default:
            break  // Other pulse-output commands (0xF0-0xFD) and unknown ones do nothing.
        }
    }

    private func writeData(_ value: UInt8) {
        guard let command = pendingCommand else {
            keyboardCommand(value)
            return
        }
        pendingCommand = nil
        switch command {
        case Self.writeCommandByte:
            commandByte = value
        case Self.writeOutputPort:
            outputPort = value
            // Bit 0 drives the CPU's reset line, active low.
            if value & 0x01 == 0 { reset() }
        case Self.writeKeyboardOutput:
            respond(value)
        case Self.writeAuxOutput:
            respond(value, aux: true)
        case Self.writeAux:
            // No mouse is attached: the controller's clock times out.
            respond(Self.auxTransmitTimeout, aux: true, timeout: true)
        default:
            break
        }
    }

    /// What a PS/2 keyboard answers: an acknowledgement (0xFA) to every
    /// command, the self-test result after a reset, and its id.
    private func keyboardCommand(_ value: UInt8) {
        if keyboardAwaitsParameter {
            keyboardAwaitsParameter = false
            respond(0xfa)
            return
        }
        switch value {
        case 0xff:  // reset
            respond(0xfa)
            respond(0xaa)
        case 0xf2:  // identify: an MF2 keyboard
            respond(0xfa)
            respond(0xab)
            respond(0x83)
        case 0xee:  // echo
            respond(0xee)
        case 0xed, 0xf3, 0xf0:  // set LEDs, typematic rate, scan code set: a parameter follows
            keyboardAwaitsParameter = true
            respond(0xfa)
        default:
            respond(0xfa)
        }
    }

    private func respond(_ byte: UInt8, aux: Bool = false, timeout: Bool = false) {
        outputQueue.append((byte, aux, timeout))
    }

    private func updateInterrupts() {
        let first = outputQueue.first
        let keyboard = (first.map { !$0.aux } ?? false) && commandByte & Self.commandByteKeyboardInterrupt != 0
        let aux = (first.map(\.aux) ?? false) && commandByte & Self.commandByteAuxInterrupt != 0
        if keyboard != keyboardLevel {
            keyboardLevel = keyboard
            keyboardInterrupt(keyboard)
        }
        if aux != auxLevel {
            auxLevel = aux
            auxInterrupt(aux)
        }
    }
}
