// Decoding: prefixes, REX, the one-byte and 0F maps, ModRM, SIB,
// displacement and immediates, in 16-, 32- and 64-bit code.

/// One decoded instruction. Opcodes of the 0F map are 0x100 + the second
/// byte; of the 0F 38 and 0F 3A maps 0x200 and 0x300 + the third.
/// The fields are stored in small integers and read as `Int`: the decoded-
/// instruction cache holds many, and a copy (a handler taking one by value)
/// stays a few moves.
struct Instruction {
    var opcode: Int {
        @inline(always) get { Int(opcodeBits) }
        @inline(always) set { opcodeBits = UInt16(truncatingIfNeeded: newValue) }
    }
    var length: Int {
        @inline(always) get { Int(lengthBits) }
        @inline(always) set { lengthBits = UInt8(truncatingIfNeeded: newValue) }
    }
    /// 2, 4 or 8: the operand size of instructions that are not byte-sized.
    var operandSize: Int {
        @inline(always) get { Int(operandSizeBits) }
        @inline(always) set { operandSizeBits = UInt8(truncatingIfNeeded: newValue) }
    }
    /// 2, 4 or 8.
    var addressSize: Int {
        @inline(always) get { Int(addressSizeBits) }
        @inline(always) set { addressSizeBits = UInt8(truncatingIfNeeded: newValue) }
    }
    var rex: UInt8 {
        @inline(always) get { rexBits }
        @inline(always) set { rexBits = newValue }
    }
    /// 0, 0xF2 or 0xF3.
    var rep: UInt8 {
        @inline(always) get { repBits }
        @inline(always) set { repBits = newValue }
    }
    var lock: Bool {
        @inline(always) get { lockBit }
        @inline(always) set { lockBit = newValue }
    }
    var operandSizePrefix: Bool {
        @inline(always) get { operandSizePrefixBit }
        @inline(always) set { operandSizePrefixBit = newValue }
    }
    var segmentOverride: Int {
        @inline(always) get { Int(segmentOverrideBits) }
        @inline(always) set { segmentOverrideBits = Int8(truncatingIfNeeded: newValue) }
    }
    var hasModRM: Bool {
        @inline(always) get { hasModRMBit }
        @inline(always) set { hasModRMBit = newValue }
    }
    var mod: Int {
        @inline(always) get { Int(modBits) }
        @inline(always) set { modBits = UInt8(truncatingIfNeeded: newValue) }
    }
    /// ModRM.reg with REX.R.
    var reg: Int {
        @inline(always) get { Int(regBits) }
        @inline(always) set { regBits = UInt8(truncatingIfNeeded: newValue) }
    }
    /// ModRM.rm with REX.B (a register when `mod == 3`).
    var rm: Int {
        @inline(always) get { Int(rmBits) }
        @inline(always) set { rmBits = UInt8(truncatingIfNeeded: newValue) }
    }
    /// The memory operand's segment and offset (when `mod != 3`). The
    /// offset is computed from the address form below each time the
    /// instruction runs (`effectiveAddress`): a cached instruction runs again
    /// with other register values.
    var segment: Int {
        @inline(always) get { Int(segmentBits) }
        @inline(always) set { segmentBits = UInt8(truncatingIfNeeded: newValue) }
    }
    var offset: UInt64 = 0
    /// The address form: displacement + base + (index << scale), masked to
    /// the address size; -1 for no register. A RIP-relative displacement
    /// already holds the next instruction's RIP.
    var base: Int8 {
        @inline(always) get { baseBits }
        @inline(always) set { baseBits = newValue }
    }
    var index: Int8 {
        @inline(always) get { indexBits }
        @inline(always) set { indexBits = newValue }
    }
    var scale: UInt8 {
        @inline(always) get { scaleBits }
        @inline(always) set { scaleBits = newValue }
    }
    var displacement: UInt64 = 0
    /// The memory operand's base register is rSP (POP Ev adjusts its
    /// address); 16-bit forms never name SP as a base.
    var stackPointerBase: Bool {
        @inline(always) get { baseBits == 4 }
    }
    var immediate: UInt64 = 0
    var mode64: Bool {
        @inline(always) get { mode64Bit }
        @inline(always) set { mode64Bit = newValue }
    }

    var nextRIP: UInt64 = 0
    /// In a cached block, the RIP of the block's next instruction: `nextRIP`,
    /// or where a followed JMP, CALL or RET goes (see DecodedCache.swift).
    var traceNext: UInt64 = 0
    /// How the instruction runs: the decoded-instruction cache keeps it
    /// with the rest, and a translator can take it over (see DecodedCache.swift).
    var handler: InstructionHandler = .execute

    // The words above, then the bytes, so that nothing is padded.
    private var opcodeBits: UInt16 = 0
    private var rexBits: UInt8 = 0
    private var repBits: UInt8 = 0
    private var lockBit = false
    private var operandSizePrefixBit = false
    private var hasModRMBit = false
    private var baseBits: Int8 = -1
    private var indexBits: Int8 = -1
    private var scaleBits: UInt8 = 0
    private var mode64Bit = false
    private var lengthBits: UInt8 = 0
    private var operandSizeBits: UInt8 = 4
    private var addressSizeBits: UInt8 = 4
    private var segmentOverrideBits: Int8 = -1
    private var modBits: UInt8 = 0
    private var regBits: UInt8 = 0
    private var rmBits: UInt8 = 0
    private var segmentBits = UInt8(SegmentRegisterName.ds.rawValue)

    /// Byte registers 4-7 are AH CH DH BH unless a REX prefix is present.
    var legacyHighBytes: Bool { rex == 0 }
    var isMemory: Bool { mod != 3 }
}

/// The fetch window of one instruction: up to 15 bytes in two words, so
/// that filling it is two loads in the common case.
struct FetchWindow {
    var low: UInt64 = 0
    var high: UInt64 = 0
    var available = 0

    @inline(__always)
    subscript(index: Int) -> UInt8 {
        UInt8(truncatingIfNeeded: index < 8 ? low >> UInt64(index * 8) : high >> UInt64((index & 7) * 8))
    }

    @inline(__always)
    mutating func append(_ byte: UInt8) {
        if available < 8 {
            low |= UInt64(byte) << UInt64(available * 8)
        } else {
            high |= UInt64(byte) << UInt64((available - 8) * 8)
        }
        available += 1
    }
}

extension X86CPU {
    /// The code's default operand and address size: 2, 4, or 8 (64-bit mode).
    var codeSize: Int {
        switch state.mode {
        case .real, .protected16, .compatibility16: return 2
        case .protected32, .compatibility32: return 4
        case .long64: return 8
        }
    }

    /// The stack's address size: SS.B outside 64-bit mode.
    var stackAddressSize: Int {
        let mode = state.mode
        if case .long64 = mode { return 8 }
        if case .real = mode { return 2 }
        return state.ss.isDefaultBig ? 4 : 2
    }

    mutating func fillFetchWindow(_ window: inout FetchWindow, at rip: UInt64) -> Bool {
        let start = linear(SegmentRegisterName.cs.rawValue, rip)
        // Outside 64-bit mode the fetch stays inside CS's limit.
        var room = 15
        if state.mode != .long64 {
            let limit = UInt64(state.cs.limit)
            guard rip <= limit else { return fault(.gp, errorCode: 0) }
            room = Int(min(limit - rip + 1, 15))
        }
        // Common case: 16 bytes inside one page of RAM.
        if start & 0xFFF <= 0x1000 - 16, let physical = translate(start, .fetch),
           let host = hostPointer(physical, size: 16, write: false) {
            window.low = host.loadUnaligned(as: UInt64.self)
            window.high = host.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
            window.available = room
            return true
        }
        // The fetch reads ahead up to 15 bytes; a page it cannot reach there
        // faults only if the instruction needs it (`fetchFault`), so the
        // walk's CR2 is put back meanwhile.
        let cr2 = state.cr2
        var address = start
        while window.available < room {
            let pageEnd = (address | 0xFFF) &+ 1
            guard let physical = translate(address, .fetch) else { break }
            var p = physical
            while address != pageEnd && window.available < room {
                guard let host = hostPointer(p, size: 1, write: false) else { break }
                window.append(host.load(as: UInt8.self))
                address &+= 1
                p &+= 1
            }
            if address != pageEnd { break }
        }
        if window.available > 0 {
            state.cr2 = cr2
            return true
        }
        // Not even the first byte: report why.
        if translate(start, .fetch) != nil { pending = .emulationFailure(address: start) }
        return false
    }

    /// Reports the fault of fetching byte `index` of the instruction at RIP.
    mutating func fetchFault(_ index: Int) -> Bool {
        if index >= 15 { return fault(.gp, errorCode: 0) }
        if state.mode != .long64 && state.rip &+ UInt64(index) > UInt64(state.cs.limit) { return fault(.gp, errorCode: 0) }
        let address = linear(SegmentRegisterName.cs.rawValue, state.rip) &+ UInt64(index)
        if let physical = translate(address, .fetch) { pending = .emulationFailure(address: physical) }
        return false
    }

    /// Decodes the instruction at RIP, with its memory operand's offset, or
    /// stores the fault of fetching it.
    mutating func decode(_ insn: inout Instruction) -> Bool {
        var window = FetchWindow()
        guard fillFetchWindow(&window, at: state.rip) else { return false }
        if let missing = decode(&insn, window, rip: state.rip, size: codeSize) { return fetchFault(missing) }
        if insn.hasModRM && insn.mod != 3 { insn.offset = effectiveAddress(&insn) }
        return true
    }

    /// The memory operand's offset from its address form and the registers now.
    @inline(always)
    mutating func effectiveAddress(_ insn: inout Instruction) -> UInt64 {
        var offset = insn.displacement
        if insn.base >= 0 { offset &+= state.reg(Int(insn.base)) }
        if insn.index >= 0 { offset &+= state.reg(Int(insn.index)) << UInt64(insn.scale) }
        return offset & sizeMask(insn.addressSize)
    }

    /// Decodes the bytes of `window`, an instruction at `rip` in code of
    /// default size `size`, reading no register (the result depends on the
    /// bytes, RIP and the code size only, so that it can be cached). Returns
    /// nil, or the index of the first byte it needed beyond the window.
    mutating func decode(_ insn: inout Instruction, _ window: FetchWindow, rip: UInt64, size: Int) -> Int? {
        insn.mode64 = size == 8
        var operandSize = size == 8 ? 4 : size
        var addressSize = size
        var i = 0
        var byte: UInt8 = 0

        // Prefixes.
        prefixes: while true {
            guard i < window.available else { return i }
            byte = window[i]
            i += 1
            switch byte {
            case 0x66: insn.operandSizePrefix = true; insn.rex = 0
            case 0x67: addressSize = size == 8 ? 4 : (size == 4 ? 2 : 4); insn.rex = 0
            case 0xF2, 0xF3: insn.rep = byte; insn.rex = 0
            case 0xF0: insn.lock = true; insn.rex = 0
            case 0x26: insn.segmentOverride = 0; insn.rex = 0
            case 0x2E: insn.segmentOverride = 1; insn.rex = 0
            case 0x36: insn.segmentOverride = 2; insn.rex = 0
            case 0x3E: insn.segmentOverride = 3; insn.rex = 0
            case 0x64: insn.segmentOverride = 4; insn.rex = 0
            case 0x65: insn.segmentOverride = 5; insn.rex = 0
            case 0x40...0x4F where size == 8: insn.rex = byte
            default: break prefixes
            }
        }
        if insn.operandSizePrefix { operandSize = operandSize == 2 ? 4 : 2 }
        if insn.rex & 0x08 != 0 { operandSize = 8 }
        // In 64-bit mode the null segment overrides other than FS/GS do nothing.
        if size == 8 && insn.segmentOverride >= 0 && insn.segmentOverride < 4 { insn.segmentOverride = -1 }

        var opcode = Int(byte)
        if byte == 0x0F {
            guard i < window.available else { return i }
            opcode = 0x100 + Int(window[i])
            i += 1
            // The three-byte maps: 0F 38 xx is 0x200 + xx, 0F 3A xx is 0x300 + xx.
            if opcode == 0x138 || opcode == 0x13A {
                guard i < window.available else { return i }
                opcode = (opcode == 0x138 ? 0x200 : 0x300) + Int(window[i])
                i += 1
            }
        }
        insn.opcode = opcode
        insn.operandSize = operandSize
        insn.addressSize = addressSize

        var ripRelative = false
        if hasModRM(opcode) {
            guard i < window.available else { return i }
            let modrm = window[i]
            i += 1
            insn.hasModRM = true
            insn.mod = Int(modrm >> 6)
            insn.reg = Int((modrm >> 3) & 7) | (insn.rex & 4 != 0 ? 8 : 0)
            let rmLow = Int(modrm & 7)
            insn.rm = rmLow | (insn.rex & 1 != 0 ? 8 : 0)
            if insn.mod != 3 {
                var segment = SegmentRegisterName.ds.rawValue
                var dispSize = 0
                if addressSize == 2 {
                    // BX BP SI DI: 3 5 6 7.
                    switch rmLow {
                    case 0: insn.base = 3; insn.index = 6
                    case 1: insn.base = 3; insn.index = 7
                    case 2: insn.base = 5; insn.index = 6; segment = 2
                    case 3: insn.base = 5; insn.index = 7; segment = 2
                    case 4: insn.base = 6
                    case 5: insn.base = 7
                    case 6:
                        if insn.mod == 0 { dispSize = 2 } else { insn.base = 5; segment = 2 }
                    default: insn.base = 3
                    }
                    if insn.mod == 1 { dispSize = 1 } else if insn.mod == 2 { dispSize = 2 }
                } else {
                    var baseLow = rmLow
                    if rmLow == 4 {
                        guard i < window.available else { return i }
                        let sib = window[i]
                        i += 1
                        let index = Int((sib >> 3) & 7) | (insn.rex & 2 != 0 ? 8 : 0)
                        baseLow = Int(sib & 7)
                        if index != 4 {
                            insn.index = Int8(index)
                            insn.scale = sib >> 6
                        }
                        if baseLow == 5 && insn.mod == 0 {
                            dispSize = 4
                        } else {
                            let base = baseLow | (insn.rex & 1 != 0 ? 8 : 0)
                            insn.base = Int8(base)
                            if base == 4 || base == 5 { segment = 2 }
                        }
                    } else if rmLow == 5 && insn.mod == 0 {
                        dispSize = 4
                        ripRelative = size == 8
                    } else {
                        insn.base = Int8(insn.rm)
                        if insn.rm == 4 || insn.rm == 5 { segment = 2 }
                    }
                    if insn.mod == 1 { dispSize = 1 } else if insn.mod == 2 { dispSize = 4 }
                }
                if dispSize > 0 {
                    guard i + dispSize <= window.available else { return window.available }
                    var disp: UInt64 = 0
                    for k in 0..<dispSize { disp |= UInt64(window[i + k]) << UInt64(k * 8) }
                    i += dispSize
                    insn.displacement = signExtend(disp, size: dispSize)
                }
                insn.segment = insn.segmentOverride >= 0 ? insn.segmentOverride : segment
            }
        }

        // Immediates.
        let immediateSize = immediateBytes(opcode, operandSize: operandSize, addressSize: addressSize,
                                           mode64: insn.mode64, reg: insn.reg)
        if immediateSize > 0 {
            guard i + immediateSize <= window.available else { return window.available }
            var value: UInt64 = 0
            for k in 0..<immediateSize { value |= UInt64(window[i + k]) << UInt64(k * 8) }
            i += immediateSize
            insn.immediate = value
        }
        insn.length = i
        insn.nextRIP = (rip &+ UInt64(i)) & (size == 8 ? ~0 : (size == 4 ? 0xFFFF_FFFF : 0xFFFF))
        if ripRelative { insn.displacement = insn.displacement &+ rip &+ UInt64(i) }
        return nil
    }

    /// Whether an opcode has a ModRM byte.
    func hasModRM(_ opcode: Int) -> Bool {
        switch opcode {
        case 0x00...0x03, 0x08...0x0B, 0x10...0x13, 0x18...0x1B, 0x20...0x23, 0x28...0x2B,
             0x30...0x33, 0x38...0x3B, 0x62, 0x63, 0x69, 0x6B, 0x80...0x8F, 0xC0, 0xC1,
             0xC4...0xC7, 0xD0...0xD3, 0xD8...0xDF, 0xF6, 0xF7, 0xFE, 0xFF:
            return true
        case 0x100...0x103, 0x10D, 0x110...0x117, 0x118...0x11F, 0x120...0x127, 0x128...0x12F,
             0x140...0x176, 0x178...0x17F, 0x190...0x19F, 0x1A3, 0x1A4, 0x1A5, 0x1AB...0x1AF, 0x1B0...0x1B9,
             0x1BA...0x1C7, 0x1D0...0x1FF, 0x200...0x3FF:
            return true
        default:
            return false
        }
    }

    /// The size in bytes of an opcode's immediate (moffs included).
    /// (Takes fields rather than the Instruction, which would be copied.)
    func immediateBytes(_ opcode: Int, operandSize: Int, addressSize: Int, mode64: Bool, reg: Int) -> Int {
        let z = operandSize == 2 ? 2 : 4
        switch opcode {
        case 0x04, 0x0C, 0x14, 0x1C, 0x24, 0x2C, 0x34, 0x3C, 0x6A, 0x6B, 0x70...0x7F, 0x80, 0x82, 0x83,
             0xA8, 0xB0...0xB7, 0xC0, 0xC1, 0xC6, 0xCD, 0xD4, 0xD5, 0xE0...0xE7, 0xEB, 0x1A4, 0x1AC, 0x1BA:
            return 1
        case 0x170...0x173, 0x1C2, 0x1C4...0x1C6, 0x300...0x3FF:  // SSE: PSHUF*, shifts by immediate, CMPPS, PINSRW, PEXTRW, SHUFPS; 0F 3A
            return 1
        case 0x05, 0x0D, 0x15, 0x1D, 0x25, 0x2D, 0x35, 0x3D, 0x68, 0x69, 0x81, 0xA9, 0xC7:
            return z
        case 0xE8, 0xE9:
            return mode64 ? 4 : z
        case 0x180...0x18F:
            return mode64 ? 4 : z
        case 0xB8...0xBF:
            return operandSize
        case 0xA0...0xA3:
            return addressSize
        case 0xC2, 0xCA:
            return 2
        case 0xC8:
            return 3
        case 0xF6, 0xF7:
            // Only TEST (reg field 0 or 1) has an immediate.
            guard reg & 7 < 2 else { return 0 }
            return opcode == 0xF6 ? 1 : z
        case 0xEA, 0x9A:
            return mode64 ? 0 : z + 2
        default:
            return 0
        }
    }
}
