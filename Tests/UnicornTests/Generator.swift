@testable import X86
import X86OracleSupport

/// One generated instruction, ready to run on both CPUs.
struct Prepared {
    var form: Form
    var size: Int
    var address: UInt64
    var bytes: [UInt8]
    /// The register operand's and the r/m operand's locations, for the rules.
    var regIndex: Int?
    var rmRegister: Int?
    var rmAddress: UInt64?
    var legacyHighBytes: Bool
    /// The REX prefix (0: none).
    var rex: UInt8
    /// The XMM registers the ModRM names (nil: not XMM).
    var regXMM: Int?
    var rmXMM: Int?
    /// Where the opcode starts in `bytes`, and the ModRM (nil: none).
    var opcodeIndex: Int
    var modrmIndex: Int?
    var immediate: UInt64
    /// What was set before the instruction, for the report.
    var setup: [String]

    var hex: String { bytes.map { String($0, radix: 16).leftPadded(2) }.joined(separator: " ") }
}

extension String {
    func leftPadded(_ width: Int) -> String { String(repeating: "0", count: max(0, width - count)) + self }
}

/// How a memory operand is reached: the ModRM, SIB and displacement bytes
/// and the registers that must hold what makes the address.
private struct Addressing {
    var modrm: UInt8 = 0  // mod and rm (reg is filled in later)
    var sib: UInt8?
    var displacement: [UInt8] = []
    var registers: [(Int, UInt64)] = []
    var rexX = false, rexB = false
    /// RIP-relative: the displacement is fixed once the length is known.
    var ripRelative = false
    var effectiveAddress: UInt64 = 0
    /// Based on rBP or rSP: SS unless overridden.
    var usesStackSegment = false
}

extension PairedMachine {
    var mode64: Bool { mode == .long64 }

    /// A register value whose low `bits` are an edge value and whose upper
    /// bits are random, zero or ones (an instruction must not read them).
    func value(_ bits: Int) -> UInt64 {
        let low = rng.edge(bits)
        if bits == 64 { return low }
        let upper: UInt64 = [0, ~0, rng.next()][rng.below(3)]
        return (upper << UInt64(bits)) | low
    }

    func randomRegister() -> Int { rng.below(mode.registerCount) }

    /// The linear address of an operand of `size` bytes in the page of
    /// `segment`, `offset` from its start.
    func target(segment: Int, offsets: ClosedRange<Int> = 0...0xFF8) -> (linear: UInt64, effective: UInt64) {
        let linear = Layout.pages[segment] + UInt64(Int.random(in: offsets, using: &rng))
        let base = cpu.state[segmentIndex: segment].base
        // 64-bit mode: only FS and GS have a base.
        let effectiveBase = mode64 && segment < 4 ? 0 : base
        return (linear, linear &- effectiveBase)
    }

    /// Generates one instance of `form` at operand size `size` (bytes, 0 for
    /// none), sets up both CPUs for it, and returns it.
    func prepare(_ form: Form, size: Int) throws -> Prepared {
        try restoreSegments()
        let address = try reserveCode()
        var registers: [(Int, UInt64)] = []
        var memory: [(UInt64, [UInt8])] = []
        var setup: [String] = []
        var flags: UInt64? = rng.oneIn(3) ? (rng.next() & (RFLAGS.arithmetic | RFLAGS.df)) | 0x202 : nil
        if let f = flags, f & RFLAGS.df != 0 && !form.needs.contains(.string) { flags = f & ~RFLAGS.df }
        // SSE forms' general registers are 32 bits, or 64 with REX.W.
        let bits = form.isSIMD ? (size == 8 ? 64 : 32) : max(size, 1) * 8
        let needs = form.needs

        // Prefixes.
        var prefixes = form.prefix
        var rex: UInt8 = 0
        var operandPrefix = false
        switch (size, mode) {
        case (2, .protected32), (2, .long64), (4, .real): operandPrefix = true
        case (8, _): if form.sizes == .v || form.sizes == .dq || rng.oneIn(4) { rex |= 0x48 }
        default: break
        }
        if form.sizes == .byte && rng.oneIn(10) { operandPrefix = true }  // ignored by byte operations
        if form.sizes == .dq { operandPrefix = false }  // 32 bits in every mode; 66 is not allowed
        if operandPrefix { prefixes.append(0x66) }
        let usesAddress = form.hasModRM || needs.contains(.string) || needs.contains(.table)
            || { if case .moffs = form.operands { return true }; return false }()
            || form.name.hasPrefix("loop") || form.name.hasPrefix("jcxz")
        var addressSize = mode.codeSize
        if usesAddress && rng.oneIn(5) {
            prefixes.append(0x67)
            addressSize = mode == .long64 ? 4 : (mode == .protected32 ? 2 : 4)
        }
        // A segment override on a memory operand (not CS: writes through it would fault on a real CPU).
        var segmentOverride: Int?
        if (form.hasModRM && form.rm != .register) || needs.contains(.string) || needs.contains(.table)
            || { if case .moffs = form.operands { return true }; return false }(), rng.oneIn(4) {
            let segment = rng.pick([0, 2, 3, 4, 5])
            segmentOverride = segment
            prefixes.append([0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65][segment])
        }

        // Operands.
        var xmmValues: [(Int, UInt128)] = []
        var rmXMM: Int?
        var regIndex: Int?
        var rmRegister: Int?
        var rmAddress: UInt64?
        var addressing: Addressing?
        var reserved: Set<Int> = []
        if needs.contains(.shiftCount) { reserved.insert(1) }
        if needs.contains(.divide) || needs.contains(.compareAccumulator) { reserved.formUnion([0, 2]) }
        if needs.contains(.comparePair) { reserved.formUnion([0, 1, 2, 3]) }
        if needs.contains(.stack) { reserved.insert(4) }
        if needs.contains(.framePointer) { reserved.insert(5) }

        var modrmReg = 0
        var opcode = form.opcode
        switch form.operands {
        case .modrm, .digit:
            if case .digit(let digit) = form.operands {
                modrmReg = digit
                if mode64 && rng.oneIn(8) { rex |= 0x44 }  // REX.R does not change an opcode extension
            } else if form.regClass == .xmm {
                modrmReg = rng.below(mode.xmmCount)
                xmmValues.append((modrmReg, xmmValue(form.elements)))
                if modrmReg >= 8 { rex |= 0x44 }
            } else {
                modrmReg = randomRegister()
                regIndex = modrmReg
                registers.append((modrmReg, value(bits)))
                if modrmReg >= 8 { rex |= 0x44 }
            }
            if needs.contains(.bitOffset) || needs.contains(.segmentLoad), let reg = regIndex { reserved.insert(reg) }
            let memoryOperand = form.rm == .memory || (form.rm == .any && rng.below(2) == 0)
            if memoryOperand {
                let segment = segmentOverride ?? 3
                var offsets = 0...0xFF8
                if needs.contains(.bitOffset) { offsets = 0x180...0xE80 }
                if needs.contains(.aligned16) && size == 8 && !rng.oneIn(10) { offsets = 0...0xFF }
                var a = makeAddressing(addressSize: addressSize, segment: segment, override: segmentOverride != nil,
                                       offsets: offsets, reserved: reserved)
                if (needs.contains(.aligned16) && size == 8 && offsets.upperBound == 0xFF)
                    || (form.needsAlignment && !rng.oneIn(10)) {
                    // CMPXCHG16B and packed SSE operands: mostly 16-byte aligned.
                    let misalignment = a.effectiveAddress & 15
                    a = realign(a, by: misalignment, addressSize: addressSize)
                }
                addressing = a
                if a.rexX { rex |= 0x42 }
                if a.rexB { rex |= 0x41 }
                let linear = linearAddress(effective: a.effectiveAddress, segment: segmentFor(a, override: segmentOverride))
                rmAddress = linear
                if form.isSIMD && form.rmClass == .xmm {
                    memory.append((linear, xmmBytes(form.elements)))
                } else {
                    memory.append((linear, (0..<16).map { _ in UInt8(truncatingIfNeeded: rng.next()) }))
                    memory[0].1.replaceSubrange(0..<8, with: le(rng.edge(64), 8))
                }
            } else if form.rmClass == .xmm {
                let rm = rng.below(mode.xmmCount)
                rmXMM = rm
                if rm >= 8 { rex |= 0x41 }
                xmmValues.append((rm, xmmValue(form.elements)))
                addressing = Addressing(modrm: 0xC0 | UInt8(rm & 7))
            } else {
                let rm = randomRegister()
                rmRegister = rm
                if rm >= 8 { rex |= 0x41 }
                registers.append((rm, value(bits)))
                addressing = Addressing(modrm: 0xC0 | UInt8(rm & 7))
            }
        case .plusRegister:
            let register = randomRegister()
            regIndex = register
            if register >= 8 { rex |= 0x41 }
            opcode[opcode.count - 1] += UInt8(register & 7)
            if !needs.contains(.stack) || register != 4 { registers.append((register, value(bits))) }
        case .moffs, .none:
            break
        }
        if mode64 && rex == 0 && rng.oneIn(4) { rex = 0x40 }
        let legacyHighBytes = rex == 0

        // Immediates.
        var immediate: UInt64 = 0
        var immediateBytes: [UInt8] = []
        let z = size == 2 ? 2 : 4
        switch form.immediate {
        case .none: break
        case .b:
            immediate = needs.contains(.shiftCount) || isShift(form) ? shiftCount() : rng.edge(8)
            immediateBytes = le(immediate, 1)
        case .w:
            immediate = rng.edge(16)
            immediateBytes = le(immediate, 2)
        case .z:
            immediate = rng.edge(z * 8)
            immediateBytes = le(immediate, z)
        case .v:
            immediate = rng.edge(bits)
            immediateBytes = le(immediate, max(size, 1))
        case .rel8:
            immediate = rng.next() & 0xFF
            immediateBytes = le(immediate, 1)
        case .relz:
            // Mostly near, so that the target is in memory.
            immediate = rng.oneIn(4) ? rng.next() : UInt64(bitPattern: Int64(rng.below(0x6000) - 0x3000))
            immediateBytes = le(immediate, z)
        case .pointer:
            let selector = segmentSelector(code: true)
            let offset = rng.oneIn(4) ? rng.next() : Layout.codeStart + UInt64(rng.below(0x3000))
            immediateBytes = le(offset, z) + le(UInt64(selector), 2)
            immediate = offset
        case .enter:
            immediate = UInt64(rng.below(0x80))
            let level = rng.oneIn(3) ? UInt64(rng.below(32)) : UInt64(rng.below(3))
            immediateBytes = le(immediate, 2) + le(level, 1)
        }
        if case .moffs = form.operands {
            let segment = segmentOverride ?? 3
            let (linear, effective) = target(segment: segment)
            rmAddress = linear
            immediateBytes = le(effective, addressSize)
            memory.append((linear, le(rng.edge(64), 8)))
        }

        // What the form needs.
        let sizeMaskBits: UInt64 = size >= 8 ? ~0 : (1 << UInt64(bits)) - 1
        func set(_ index: Int, _ value: UInt64) { registers.append((index, value)) }
        if needs.contains(.stack) {
            let (linear, effective) = target(segment: 2, offsets: 0x200...0xE00)
            set(4, mode == .real ? (rng.next() << 16) | effective : linear)
            // The top of the stack: a code address half the time (RET), else random.
            memory.append((linear, le(rng.oneIn(2) ? Layout.codeStart + UInt64(rng.below(0x3000)) : rng.edge(64), 8)))
            if needs.contains(.segmentLoad) {
                memory.append((linear, le(UInt64(segmentSelector(code: false)), 2)))
            }
            if form.name == "popf", rng.oneIn(2) {
                // Arithmetic flags and DF from the popped image, TF and the system flags left clear.
                memory.append((linear, le((rng.next() & (RFLAGS.arithmetic | RFLAGS.df)) | 0x202, 8)))
            }
        }
        if needs.contains(.framePointer) {
            let (linear, effective) = target(segment: 2, offsets: 0x200...0xE00)
            set(5, mode == .real ? (rng.next() << 16) | effective : linear)
        }
        if needs.contains(.shiftCount) {
            set(1, (rng.next() & ~0xFF) | shiftCount())
        }
        if needs.contains(.divide) && rng.below(3) != 0 {
            // A dividend whose quotient usually fits: high part below the divisor, or the sign.
            let divisor = operandValue(registers: registers, memory: memory, rmRegister: rmRegister,
                                       rmAddress: rmAddress, size: max(size, 1), legacyHighBytes: legacyHighBytes)
            let low = rng.edge(bits)
            let signed = form.name.hasPrefix("idiv")
            let high: UInt64 = signed
                ? (low & (1 << UInt64(bits - 1)) != 0 ? sizeMaskBits : 0)
                : (divisor == 0 ? 0 : rng.next() % divisor)
            if size == 1 {
                set(0, (rng.next() & ~0xFFFF) | (high & 0xFF) << 8 | low)
            } else {
                set(0, (rng.next() & ~sizeMaskBits) | low)
                set(2, (rng.next() & ~sizeMaskBits) | high)
            }
        }
        if needs.contains(.compareAccumulator) && rng.below(2) == 0 {
            let current = operandValue(registers: registers, memory: memory, rmRegister: rmRegister,
                                       rmAddress: rmAddress, size: max(size, 1), legacyHighBytes: legacyHighBytes)
            set(0, (rng.next() & ~sizeMaskBits) | current)
        }
        if needs.contains(.comparePair), let address = rmAddress, rng.below(2) == 0 {
            let half = size == 8 ? 8 : 4
            let bytes = memory.last { $0.0 == address }?.1 ?? []
            let low = bytes.count >= 2 * half ? leValue(Array(bytes[0..<half])) : 0
            let high = bytes.count >= 2 * half ? leValue(Array(bytes[half..<2 * half])) : 0
            set(0, low)
            set(2, high)
        }
        if needs.contains(.bitOffset), let reg = regIndex, rmAddress != nil {
            // A bit offset within ±2 KiB bits of the operand, sign-extended from the operand size.
            let offset = UInt64(bitPattern: Int64(rng.below(0x1000) - 0x800))
            set(reg, (rng.next() & ~sizeMaskBits) | (offset & sizeMaskBits))
        }
        if needs.contains(.segmentLoad) {
            let selector = UInt64(segmentSelector(code: needs.contains(.branch)))
            if let rm = rmRegister {
                set(rm, (rng.next() & ~0xFFFF) | selector)
            } else if let address = rmAddress {
                if needs.contains(.farPointer) {
                    let offsetSize = max(size, 2)
                    // A far jump's target: mostly code.
                    var offset = needs.contains(.branch) && !rng.oneIn(4)
                        ? Layout.codeStart + UInt64(rng.below(0x3000)) : rng.edge(offsetSize * 8)
                    var selector = selector
                    if offsetSize == 8 && !needs.contains(.branch) {
                        // unicorn reads LSS/LFS/LGS m16:64 as m16:32 (see UnicornDeviations): two
                        // selectors that load alike, one where each reads it.
                        let good: [UInt16] = form.name.hasPrefix("lss") ? [Layout.data] : [Layout.data, Layout.dataFS, Layout.dataGS, 0]
                        selector = UInt64(rng.pick(good))
                        offset = offset & ~(0xFFFF << 32) | UInt64(rng.pick(good)) << 32
                    }
                    memory.append((address, le(offset, offsetSize) + le(selector, 2)))
                } else {
                    memory.append((address, le(selector, 2)))
                }
            }
        }
        if needs.contains(.string) {
            let source = target(segment: segmentOverride ?? 3, offsets: 0x100...0xF00)
            let destination = target(segment: 0, offsets: 0x100...0xF00)
            let mask: UInt64 = addressSize == 8 ? ~0 : (1 << UInt64(addressSize * 8)) - 1
            set(6, (rng.next() & ~mask) | source.effective)
            set(7, (rng.next() & ~mask) | destination.effective)
            let count = UInt64(rng.oneIn(4) ? 0 : rng.below(9))
            set(1, form.prefix.isEmpty ? value(64) : (rng.next() & ~mask) | count)
            flags = (rng.next() & (RFLAGS.arithmetic | RFLAGS.df)) | 0x202
            // Elements that often match, so that REPE/REPNE stop at different places.
            if rng.below(2) == 0 {
                let fill = le(rng.edge(64), 8)
                for page in [source.linear, destination.linear] {
                    for k in stride(from: -64, to: 64, by: 8) { memory.append((UInt64(Int(page) + k), fill)) }
                }
            }
        }
        if needs.contains(.mxcsrImage), let address = rmAddress {
            // Exceptions stay masked (unicorn raises no #XM); a fifth of the
            // images set a reserved bit (#GP).
            var image = FloatingPointState.defaultMXCSR | UInt32(truncatingIfNeeded: rng.next()) & 0x603F
            if rng.oneIn(5) { image |= 1 << UInt32(16 + rng.below(16)) }
            memory.append((address, le(UInt64(image), 4)))
        }
        if needs.contains(.table) {
            let table = target(segment: segmentOverride ?? 3, offsets: 0...0xEFF)
            let mask: UInt64 = addressSize == 8 ? ~0 : (1 << UInt64(addressSize * 8)) - 1
            set(3, (rng.next() & ~mask) | table.effective)
        }
        // The memory operand's address registers go last: they win.
        if let a = addressing { registers += a.registers }

        // Encode.
        var bytes = prefixes
        for i in bytes.indices.reversed() where i > 0 {  // any order of legacy prefixes
            bytes.swapAt(i, rng.below(i + 1))
        }
        if needs.contains(.lockable) && rmAddress != nil && form.hasModRM && rng.oneIn(4) { bytes.insert(0xF0, at: 0) }
        if mode64 && rex != 0 { bytes.append(rex) }
        let opcodeIndex = bytes.count
        bytes += opcode
        let modrmIndex = addressing == nil ? nil : bytes.count
        if var a = addressing {
            bytes.append(a.modrm | UInt8((modrmReg & 7) << 3))
            if let sib = a.sib { bytes.append(sib) }
            let displacementAt = bytes.count
            bytes += a.displacement
            bytes += immediateBytes
            if a.ripRelative {
                let next = address + UInt64(bytes.count)
                let displacement = a.effectiveAddress &- next
                bytes.replaceSubrange(displacementAt..<displacementAt + 4, with: le(displacement, 4))
                a.ripRelative = false
            }
        } else {
            bytes += immediateBytes
        }

        // Apply to both CPUs.
        for (index, value) in registers {
            try setRegister(index, value)
            setup.append("\(registerName(index))=\(hex(value))")
        }
        for (address, data) in memory {
            writeMemory(data, at: address)
        }
        for (index, value) in xmmValues {
            try setXMM(index, value)
            setup.append("xmm\(index)=\(hex128(value))")
        }
        if form.isSIMD && rng.oneIn(3) {
            // A rounding mode and sticky flags; the exceptions stay masked
            // (unicorn raises no #XM) and FTZ and DAZ clear (unicorn ignores
            // them: see UnicornDeviations).
            try setMXCSR(FloatingPointState.defaultMXCSR | UInt32(truncatingIfNeeded: rng.next()) & 0x603F)
        }
        if form.isSIMD { setup.append("mxcsr=\(hex(UInt64(cpu.state.fpu.mxcsr)))") }
        if let address = rmAddress { setup.append("[\(hex(address))]=\(hex(leValue(x86Memory.read(at: Int(address), count: 8))))") }
        if needs.contains(.stack) {
            let top = linearAddress(effective: cpu.state.gpr[4], segment: 2)
            if top + 8 <= UInt64(Layout.memorySize) { setup.append("[rsp]=\(hex(leValue(x86Memory.read(at: Int(top), count: 8))))") }
        }
        if let f = flags {
            try setFlags(f)
            setup.append("flags=\(hex(f))")
        } else {
            setup.append("flags=\(hex(cpu.state.rflags)) (lazy)")
        }
        return Prepared(form: form, size: size, address: address, bytes: bytes, regIndex: regIndex,
                        rmRegister: rmRegister, rmAddress: rmAddress, legacyHighBytes: legacyHighBytes,
                        rex: mode64 ? rex : 0, regXMM: form.regClass == .xmm && form.hasModRM && { if case .digit = form.operands { return false }; return true }() ? modrmReg : nil,
                        rmXMM: rmXMM, opcodeIndex: opcodeIndex, modrmIndex: modrmIndex, immediate: immediate,
                        setup: setup)
    }

    /// 16 bytes of lanes of edge values, or (a third of the time) random bits.
    func xmmBytes(_ elements: Form.Elements) -> [UInt8] {
        let value = xmmValue(elements)
        return (0..<16).map { UInt8(truncatingIfNeeded: value >> UInt128($0 * 8)) }
    }

    func xmmValue(_ elements: Form.Elements) -> UInt128 {
        if rng.oneIn(3) { return UInt128(rng.next()) << 64 | UInt128(rng.next()) }
        let width: Int
        switch elements {
        case .f32, .i32: width = 32
        case .f64, .i64, .none: width = 64
        case .i8: width = 8
        case .i16: width = 16
        }
        var value: UInt128 = 0
        for lane in 0..<(128 / width) {
            let element: UInt64
            switch elements {
            case .f32: element = rng.oneIn(4) ? rng.next() & 0xFFFF_FFFF : rng.pick(Self.floatEdges)
            case .f64: element = rng.oneIn(4) ? rng.next() : rng.pick(Self.doubleEdges)
            default: element = rng.edge(width)
            }
            value |= UInt128(element) << UInt128(lane * width)
        }
        return value
    }

    /// Zeros, ones, halves (rounding), the largest and smallest normals,
    /// denormals, infinities, quiet and signalling NaNs, and the integer
    /// conversions' limits.
    static let floatEdges: [UInt64] = [
        0, 0x8000_0000, 0x3F80_0000, 0xBF80_0000, 0x3F00_0000, 0x3FC0_0000, 0x4020_0000, 0xC020_0000, 0x7F7F_FFFF,
        0xFF7F_FFFF, 0x0080_0000, 0x0000_0001, 0x807F_FFFF, 0x7F80_0000, 0xFF80_0000, 0x7FC0_0000, 0xFFC0_0000,
        0x7FA0_0000, 0xFFA0_0001, 0x4F00_0000, 0xCF00_0000, 0xCF00_0001, 0x5F00_0000, 0x4B80_0000, 0x3EAA_AAAB,
    ]
    static let doubleEdges: [UInt64] = [
        0, 0x8000_0000_0000_0000, 0x3FF0_0000_0000_0000, 0xBFF0_0000_0000_0000, 0x3FE0_0000_0000_0000,
        0x3FF8_0000_0000_0000, 0x4004_0000_0000_0000, 0xC004_0000_0000_0000, 0x7FEF_FFFF_FFFF_FFFF,
        0x0010_0000_0000_0000, 0x0000_0000_0000_0001, 0x800F_FFFF_FFFF_FFFF, 0x7FF0_0000_0000_0000,
        0xFFF0_0000_0000_0000, 0x7FF8_0000_0000_0000, 0xFFF8_0000_0000_0000, 0x7FF4_0000_0000_0000,
        0xFFF0_0000_0000_0001, 0x41E0_0000_0000_0000, 0xC1E0_0000_0020_0000, 0x43E0_0000_0000_0000,
        0x47EF_FFFF_E000_0000, 0x47EF_FFFF_F000_0000, 0x3690_0000_0000_0000, 0x3FD5_5555_5555_5555,
    ]

    func isShift(_ form: Form) -> Bool {
        switch form.flags {
        case .shift, .shiftArithmetic, .rotate, .doubleShift: return true
        default: return false
        }
    }

    /// Counts at the edges of every operand width.
    func shiftCount() -> UInt64 {
        rng.oneIn(4) ? rng.next() & 0xFF : rng.pick([0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 32, 33, 63, 64, 65])
    }

    /// A selector to load: anything in real mode; in protected mode one of
    /// the GDT's (good and bad ones), a null one, or one past the limit.
    func segmentSelector(code: Bool) -> UInt16 {
        if mode == .real { return rng.oneIn(2) ? UInt16(truncatingIfNeeded: rng.next()) : UInt16(Layout.pages[rng.below(6)] >> 4) }
        if code {
            return rng.pick([Layout.code32, Layout.code32, Layout.code16, Layout.code64, Layout.executeOnly, Layout.data, 0,
                             Layout.notPresent, 0x58, Layout.code32 | 3])
        }
        return rng.pick([Layout.data, Layout.data, Layout.dataFS, Layout.dataGS, 0, 3, Layout.code32, Layout.notPresent,
                         Layout.dataDPL3, Layout.readOnly, Layout.executeOnly, Layout.data | 3, 0x58, 0x14,
                         UInt16(truncatingIfNeeded: rng.next())])
    }

    func registerName(_ index: Int) -> String {
        ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"][index]
    }

    /// The value of the r/m operand as set up (before the instruction).
    func operandValue(registers: [(Int, UInt64)], memory: [(UInt64, [UInt8])], rmRegister: Int?, rmAddress: UInt64?,
                      size: Int, legacyHighBytes: Bool) -> UInt64 {
        let mask: UInt64 = size >= 8 ? ~0 : (1 << UInt64(size * 8)) - 1
        if let rm = rmRegister {
            let high = size == 1 && legacyHighBytes && rm >= 4 && rm < 8
            let index = high ? rm - 4 : rm
            let full = registers.last { $0.0 == index }?.1 ?? cpu.state.gpr[index]
            return (high ? full >> 8 : full) & mask
        }
        if let address = rmAddress, let bytes = memory.last(where: { $0.0 == address })?.1 {
            return leValue(Array(bytes.prefix(8))) & mask
        }
        return 0
    }

    // MARK: Memory operands

    private func segmentFor(_ a: Addressing, override: Int?) -> Int { override ?? (a.usesStackSegment ? 2 : 3) }

    func linearAddress(effective: UInt64, segment: Int) -> UInt64 {
        let base = mode64 && segment < 4 ? 0 : cpu.state[segmentIndex: segment].base
        return mode64 ? base &+ effective : (base &+ effective) & 0xFFFF_FFFF
    }

    /// A ModRM (and SIB, displacement) reaching an operand in the page of
    /// the segment it goes through, with its registers' values.
    private func makeAddressing(addressSize: Int, segment: Int, override: Bool, offsets: ClosedRange<Int>,
                                reserved: Set<Int>) -> Addressing {
        if addressSize == 2 { return makeAddressing16(segment: segment, override: override, offsets: offsets, reserved: reserved) }
        let count = mode.registerCount
        let mask: UInt64 = addressSize == 8 ? ~0 : 0xFFFF_FFFF
        for _ in 0..<16 {
            var a = Addressing()
            let kind = rng.below(8)
            let mod = rng.below(3)
            var displacement: UInt64 = 0
            switch mod {
            case 1: displacement = UInt64(bitPattern: Int64(Int8(truncatingIfNeeded: rng.next())))
                a.displacement = le(displacement, 1)
            case 2: displacement = UInt64(bitPattern: Int64(Int32(truncatingIfNeeded: rng.next() % 0x20000) - 0x10000))
                a.displacement = le(displacement, 4)
            default: break
            }
            var base: Int? = rng.below(count)
            var index: Int? = nil
            var scale = 0
            var absolute = false
            switch kind {
            case 0, 1, 2:  // [base + disp]
                if base! & 7 == 4 { index = nil; a.sib = 0x24 }  // rSP/r12 base need a SIB
                if base! & 7 == 5 && mod == 0 { continue }
            case 3, 4, 5:  // [base + index*scale + disp]
                index = rng.below(count)
                if index! == 4 || index! == base! { continue }
                scale = rng.below(4)
                if base! & 7 == 5 && mod == 0 { continue }
            case 6:  // [index*scale + disp32], no base
                guard mod == 0 else { continue }
                base = nil
                index = rng.below(count)
                if index! == 4 { continue }
                scale = rng.below(4)
            default:  // [disp32], or RIP-relative in 64-bit mode
                guard mod == 0 else { continue }
                base = nil
                absolute = true
            }
            if let b = base, reserved.contains(b) { continue }
            if let i = index, reserved.contains(i) { continue }
            let usesStack = base.map { $0 == 4 || $0 == 5 } ?? false
            a.usesStackSegment = usesStack
            let seg = override ? segment : (usesStack ? 2 : 3)
            var range = offsets
            if base == 4 {
                // RSP as the base: keep it a usable stack pointer too.
                let low = max(offsets.lowerBound, 0x200), high = min(offsets.upperBound, 0xE00)
                guard low <= high else { continue }
                range = low...high
            }
            let (_, effective) = target(segment: seg, offsets: range)
            a.effectiveAddress = effective & mask
            let rm: Int
            if index != nil || base == nil && !absolute || a.sib != nil {
                rm = 4
                let i = index ?? 4
                let b = base ?? 5
                a.sib = UInt8(scale << 6) | UInt8((i & 7) << 3) | UInt8(b & 7)
                a.rexX = i >= 8
                a.rexB = b >= 8
            } else if absolute {
                if mode64 && rng.below(2) == 0 {
                    rm = 5
                    a.ripRelative = true
                    a.displacement = le(0, 4)
                } else {
                    rm = mode64 ? 4 : 5
                    if mode64 { a.sib = 0x25 }
                    a.displacement = le(effective, 4)
                }
            } else {
                rm = base! & 7
                a.rexB = base! >= 8
            }
            if base == nil && !absolute {
                // [index*scale + disp32]: the displacement is random, the index makes up the rest.
                displacement = UInt64(bitPattern: Int64(Int32(truncatingIfNeeded: rng.next() % 0x10000)))
                a.displacement = le(displacement, 4)
                let needed = (effective &- displacement) & mask
                let i = index!
                // needed must be a multiple of the scale: adjust the displacement.
                let remainder = needed & ((1 << UInt64(scale)) - 1)
                displacement = displacement &+ remainder
                a.displacement = le(displacement, 4)
                let indexValue = ((effective &- displacement) & mask) >> UInt64(scale)
                a.registers.append((i, garbageAbove(indexValue, addressSize: addressSize, scale: scale)))
            } else if let b = base {
                var rest = (effective &- displacement) & mask
                if let i = index {
                    let indexValue = rng.edge(64)
                    a.registers.append((i, indexValue))
                    rest = (rest &- (indexValue << UInt64(scale))) & mask
                }
                a.registers.append((b, garbageAbove(rest, addressSize: addressSize, scale: 0)))
            }
            a.modrm = UInt8(mod << 6) | UInt8(rm)
            return a
        }
        // Fallback: an absolute address.
        var a = Addressing()
        let seg = override ? segment : 3
        let (_, effective) = target(segment: seg, offsets: offsets)
        a.effectiveAddress = effective & mask
        if mode64 {
            a.modrm = 0x04
            a.sib = 0x25
        } else {
            a.modrm = 0x05
        }
        a.displacement = le(effective, 4)
        return a
    }

    /// Random bits above a 32-bit address in 64-bit mode (with 67 the CPU must ignore them).
    private func garbageAbove(_ value: UInt64, addressSize: Int, scale: Int) -> UInt64 {
        guard addressSize == 4 else { return value }
        let keep = UInt64(32 - scale)
        let garbage = mode64 ? rng.next() << keep : 0
        return mode64 ? (value & ((1 << keep) - 1)) | garbage : value
    }

    private func makeAddressing16(segment: Int, override: Bool, offsets: ClosedRange<Int>, reserved: Set<Int>) -> Addressing {
        // rm: [bx+si] [bx+di] [bp+si] [bp+di] [si] [di] [bp] [bx]
        let registersOf: [[Int]] = [[3, 6], [3, 7], [5, 6], [5, 7], [6], [7], [5], [3]]
        for _ in 0..<16 {
            var a = Addressing()
            let rm = rng.below(8)
            let mod = rng.below(3)
            let absolute = rm == 6 && mod == 0
            let used = absolute ? [] : registersOf[rm]
            if used.contains(where: reserved.contains) { continue }
            a.usesStackSegment = !absolute && (rm == 2 || rm == 3 || rm == 6)
            let seg = override ? segment : (a.usesStackSegment ? 2 : 3)
            let (_, effective) = target(segment: seg, offsets: offsets)
            a.effectiveAddress = effective & 0xFFFF
            var displacement: UInt64 = 0
            if absolute {
                a.displacement = le(effective, 2)
            } else if mod == 1 {
                displacement = UInt64(bitPattern: Int64(Int8(truncatingIfNeeded: rng.next())))
                a.displacement = le(displacement, 1)
            } else if mod == 2 {
                displacement = rng.next() & 0xFFFF
                a.displacement = le(displacement, 2)
            }
            var rest = (effective &- displacement) & 0xFFFF
            if used.count == 2 {
                let first = rng.next()
                a.registers.append((used[0], first))
                rest = (rest &- first) & 0xFFFF
            }
            if let last = used.last { a.registers.append((last, (rng.next() & ~0xFFFF) | rest)) }
            a.modrm = UInt8(mod << 6) | UInt8(rm)
            return a
        }
        var a = Addressing()
        let (_, effective) = target(segment: override ? segment : 3, offsets: offsets)
        a.modrm = 0x06
        a.displacement = le(effective, 2)
        a.effectiveAddress = effective & 0xFFFF
        return a
    }

    /// Moves an operand down by `amount` bytes by changing its displacement
    /// (or base register), for alignment.
    private func realign(_ a: Addressing, by amount: UInt64, addressSize: Int) -> Addressing {
        guard amount != 0 else { return a }
        var a = a
        a.effectiveAddress &-= amount
        if a.ripRelative {
            // The displacement is computed from the effective address with the length.
        } else if a.displacement.count >= 2 {
            let d = leValue(a.displacement) &- amount
            a.displacement = le(d, a.displacement.count)
        } else if let last = a.registers.indices.last {
            // The base (an index alone always comes with a displacement, handled above).
            a.registers[last].1 &-= amount
        }
        return a
    }
}

func le(_ value: UInt64, _ count: Int) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: value >> UInt64(min($0, 7) * 8)) }
}

func leValue(_ bytes: [UInt8]) -> UInt64 {
    bytes.prefix(8).enumerated().reduce(0) { $0 | UInt64($1.element) << UInt64($1.offset * 8) }
}

func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }

func hex128(_ value: UInt128) -> String { "0x" + String(value, radix: 16) }
