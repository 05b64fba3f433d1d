// IN and OUT: the step loop stops with a port-I/O exit. An `out` is done
// (RIP past it); an `in` stays at its instruction until `completeInput`
// gives the value and moves RIP on, which is what KVM shows user space.

extension X86CPU {
    mutating func executePortIO(_ insn: inout Instruction) -> Bool {
        let op = insn.opcode
        let size = op & 1 == 0 ? 1 : min(insn.operandSize, 4)
        let port = op < 0xE8 ? UInt16(insn.immediate & 0xFF) : UInt16(truncatingIfNeeded: state.reg(2))
        // IOPL and the TSS's I/O bitmap (Virtual8086.swift).
        guard ioPermitted(port: port, size: size) else { return false }
        let isWrite = op & 2 != 0
        if isWrite {
            state.rip = insn.nextRIP
            let data = state.read(0, size: size, legacyHighBytes: false)
            return exit(.io(PortIOExit(port: port, size: size, isWrite: true, data: data)))
        }
        inputSize = size
        inputNextRIP = insn.nextRIP
        return exit(.io(PortIOExit(port: port, size: size, isWrite: false, data: 0)))
    }
}

/// A string `ins` that waits for its data.
struct StringInput {
    var count = 0
    var size = 0
    var addressSize = 2
    var repeated = false
    var nextRIP: UInt64 = 0
}

extension X86CPU {
    /// 6C-6F INS and OUTS. OUTS gives one exit per element (KVM's emulator
    /// batches only INS); INS asks for as
    /// many elements as fit before the end of the destination page (at most
    /// 1024 bytes), as KVM's emulator reads ahead, and takes them all from
    /// `completeStringInput`.
    mutating func executeStringPortIO(_ insn: inout Instruction) -> Bool {
        let op = insn.opcode
        let size = op & 1 == 0 ? 1 : min(insn.operandSize, 4)
        let port = UInt16(truncatingIfNeeded: state.reg(2))
        guard ioPermitted(port: port, size: size) else { return false }
        let addressSize = insn.addressSize
        let mask = sizeMask(addressSize)
        let repeated = insn.rep != 0
        let count = repeated ? state.read(1, size: addressSize, legacyHighBytes: false) : 1
        if count == 0 {
            state.rip = insn.nextRIP
            return true
        }
        let down = state.flags.bits & RFLAGS.df != 0
        let step = down ? 0 &- UInt64(size) : UInt64(size)
        if op >= 0x6E {
            let source = insn.segmentOverride >= 0 ? insn.segmentOverride : SegmentRegisterName.ds.rawValue
            let si = state.reg(6) & mask
            guard let value = read(source, si, size: size) else { return false }
            state.write(6, si &+ step, size: addressSize, legacyHighBytes: false)
            // As KVM's emulator shows it: the element's registers are
            // written back, RIP stays at the instruction (RF set while a REP
            // restarts), and the last element completes it on the next run.
            let left = repeated ? (count &- 1) & mask : 0
            if repeated { state.write(1, left, size: addressSize, legacyHighBytes: false) }
            if left == 0 {
                outputCompletionRIP = insn.nextRIP
            } else {
                state.rflags |= RFLAGS.rf
            }
            return exit(.io(PortIOExit(port: port, size: size, isWrite: true, data: value)))
        }
        let di = state.reg(7) & mask
        let inPage = down ? di & 0xFFF : 0x1000 - (di & 0xFFF)
        let elements = max(1, min(inPage, UInt64(1024 / size), count))
        // The first destination is checked now, so that its fault comes before the exit.
        guard translate(linear(SegmentRegisterName.es.rawValue, di), .write) != nil else { return false }
        stringInput = StringInput(count: Int(elements), size: size, addressSize: addressSize, repeated: repeated,
                                  nextRIP: insn.nextRIP)
        return exit(.io(PortIOExit(port: port, size: size, isWrite: false, data: 0, count: Int(elements))))
    }

    /// Whether the last `.io` exit was a string `ins` (answered with `completeStringInput`).
    public var hasStringInput: Bool { stringInput.count > 0 }

    /// Answers the string `ins` of the last `.io` exit with `count * size`
    /// bytes, which go to ES:rDI in order; rDI, rCX and RIP move as the
    /// instruction's iterations would.
    public mutating func completeStringInput(_ bytes: UnsafeRawBufferPointer) {
        let input = stringInput
        guard input.count > 0 else { return }
        stringInput = StringInput()
        let mask = sizeMask(input.addressSize)
        let step = state.flags.bits & RFLAGS.df != 0 ? 0 &- UInt64(input.size) : UInt64(input.size)
        for i in 0..<input.count where (i + 1) * input.size <= bytes.count {
            var value: UInt64 = 0
            for k in 0..<input.size { value |= UInt64(bytes[i * input.size + k]) << UInt64(k * 8) }
            let di = state.reg(7) & mask
            guard write(SegmentRegisterName.es.rawValue, di, value, size: input.size) else { return }
            state.write(7, di &+ step, size: input.addressSize, legacyHighBytes: false)
            if input.repeated {
                let left = (state.read(1, size: input.addressSize, legacyHighBytes: false) &- 1) & mask
                state.write(1, left, size: input.addressSize, legacyHighBytes: false)
            }
        }
        // KVM's emulator sets RF while a REP string instruction restarts and
        // clears it when the instruction completes.
        if !input.repeated || state.read(1, size: input.addressSize, legacyHighBytes: false) == 0 {
            state.rip = input.nextRIP
            state.rflags &= ~RFLAGS.rf
            interruptShadow = false
        } else {
            state.rflags |= RFLAGS.rf
        }
    }
}
