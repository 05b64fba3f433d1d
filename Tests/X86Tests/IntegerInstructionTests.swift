import Testing
@testable import X86

/// [disp32] in 32-bit code: ModRM mod 00, r/m 101.
private func abs32(_ reg: Int, _ address: UInt32) -> [UInt8] {
    [UInt8((reg & 7) << 3 | 5)] + LoopAssembler.imm32(address)
}

/// [disp16] in 16-bit code: ModRM mod 00, r/m 110.
private func abs16(_ reg: Int, _ address: UInt16) -> [UInt8] {
    [UInt8((reg & 7) << 3 | 6), UInt8(address & 0xFF), UInt8(address >> 8)]
}

/// The REX and operand-size prefixes of a 64-bit-mode instruction of `width` bits.
private func widthPrefix(_ width: Int) -> [UInt8] {
    switch width {
    case 16: return [0x66]
    case 64: return [0x48]
    default: return []
    }
}

private func mask(_ width: Int) -> UInt64 { width == 64 ? ~0 : (1 << UInt64(width)) - 1 }

/// `value` written into `old` at `width` bits, as a 64-bit-mode register write does.
private func merged(_ old: UInt64, _ value: UInt64, width: Int) -> UInt64 {
    width == 32 ? value & mask(32) : (old & ~mask(width)) | (value & mask(width))
}

@Suite("X86 exchange instructions: CMPXCHG, XADD, CMPXCHG8B, CMPXCHG16B")
struct ExchangeInstructionTests {
    /// cmpxchg rcx/ecx/cx/cl, rbx/ebx/bx/bl in 64-bit mode.
    func cmpxchgRegister(width: Int, accumulator: UInt64, destination: UInt64) -> Machine {
        let m = Machine(.long64, code: widthPrefix(width) + [0x0F, width == 8 ? 0xB0 : 0xB1, 0xD9, hlt])
        m[.rax] = accumulator
        m[.rcx] = destination
        m[.rbx] = 0x5555_6666_7777_8888
        #expect(m.run() == .halt)
        return m
    }

    @Test(arguments: [8, 16, 32, 64])
    func cmpxchgEqualWritesDestinationAndLeavesAccumulator(width: Int) {
        let accumulator: UInt64 = 0xAAAA_BBBB_CCCC_DD42
        let destination = (0x1111_2222_3333_4444 & ~mask(width)) | (accumulator & mask(width))
        let m = cmpxchgRegister(width: width, accumulator: accumulator, destination: destination)
        #expect(m[.rcx] == merged(destination, 0x5555_6666_7777_8888, width: width))
        #expect(m[.rax] == accumulator)
        #expect(m.flags == flags("ZP"))
    }

    /// A failing compare loads the accumulator (a 32-bit one zero-extended)
    /// and leaves a register destination whole: its upper half too.
    @Test(arguments: [8, 16, 32, 64])
    func cmpxchgUnequalLoadsAccumulatorAndLeavesDestination(width: Int) {
        let accumulator = (0xFFFF_FFFF_FFFF_FF00 & ~mask(width)) | 1
        let destination = (0x1234_5678_9ABC_DE00 & ~mask(width)) | 2
        let m = cmpxchgRegister(width: width, accumulator: accumulator, destination: destination)
        #expect(m[.rcx] == destination)
        #expect(m[.rax] == merged(accumulator, destination, width: width))
        // 1 - 2 at the operand width: a borrow to all ones.
        #expect(m.flags == flags("SAPC"))
    }

    @Test func cmpxchgMemoryWritesSourceOnlyWhenEqual() {
        // cmpxchg [0x2000], ebx twice: equal, then (EAX unchanged, memory changed) unequal.
        let code = [0x0F, 0xB1] + abs32(3, 0x2000) + [0x0F, 0xB1] + abs32(3, 0x2000) + [hlt]
        let m = Machine(.protected32, code: code)
        m.store64(0x2000, 0x9999_0000_0000_0007)
        m[.rax] = 7
        m[.rbx] = 0x0102_0304
        #expect(m.run() == .halt)
        #expect(m.load64(0x2000) == 0x9999_0000_0102_0304)
        #expect(m[.rax] == 0x0102_0304)
        #expect(m.flags & RFLAGS.zf == 0)
    }

    @Test func cmpxchgByteUsesALAndHighByteRegisters() {
        // cmpxchg ch, dh in real mode (no REX): AL == CH, so CH takes DH.
        let m = Machine(code: [0x0F, 0xB0, 0xF5, hlt])
        m[.rax] = 0x33
        m[.rcx] = 0x3300
        m[.rdx] = 0x4400
        #expect(m.run() == .halt)
        #expect(m[.rcx] == 0x4400)
        #expect(m.flags == flags("ZP"))
    }

    @Test func xaddSwapsAndAdds() {
        // xadd [0x2000], ebx; xadd ecx, ecx (the sum, written last, wins)
        let m = Machine(.protected32, code: [0x0F, 0xC1] + abs32(3, 0x2000) + [0x0F, 0xC1, 0xC9, hlt])
        m.store64(0x2000, 0xFFFF_FFFF)
        m[.rbx] = 1
        m[.rcx] = 0x4000_0000
        #expect(m.run() == .halt)
        #expect(m.load64(0x2000) == 0)
        #expect(m[.rbx] == 0xFFFF_FFFF)
        #expect(m[.rcx] == 0x8000_0000)
        #expect(m.flags == flags("OSP"))  // 0x40000000 + 0x40000000
    }

    @Test func xaddByteAndQuadwordForms() {
        // xadd al, ah (no REX): AH = old AL, AL = sum; xadd r9, r10
        let m = Machine(.long64, code: [0x0F, 0xC0, 0xE0, 0x4D, 0x0F, 0xC1, 0xD1, hlt])
        m[.rax] = 0x1080
        m[.r9] = 0xFFFF_FFFF_FFFF_FFFF
        m[.r10] = 2
        #expect(m.run() == .halt)
        #expect(m[.rax] == 0x8090)
        #expect(m[.r10] == 0xFFFF_FFFF_FFFF_FFFF)
        #expect(m[.r9] == 1)
        #expect(m.flags == flags("AC"))
    }

    @Test func cmpxchg8bEqualStoresECXEBXAndSetsOnlyZF() {
        // stc; cmpxchg8b [0x2000] in 64-bit mode: the upper halves of RAX RDX RBX RCX do not take part.
        let m = Machine(.long64, code: [0xF9, 0x0F, 0xC7] + LoopAssembler.absolute(1, 0x2000) + [hlt])
        m.store64(0x2000, 0x0000_0002_0000_0001)
        m[.rax] = 0xFFFF_FFFF_0000_0001
        m[.rdx] = 0xAAAA_AAAA_0000_0002
        m[.rbx] = 0x7777_7777_1111_1111
        m[.rcx] = 0x7777_7777_2222_2222
        #expect(m.run() == .halt)
        #expect(m.load64(0x2000) == 0x2222_2222_1111_1111)
        #expect(m[.rax] == 0xFFFF_FFFF_0000_0001 && m[.rdx] == 0xAAAA_AAAA_0000_0002)
        #expect(m.flags == flags("ZC"))
    }

    @Test func cmpxchg8bUnequalLoadsEDXEAXZeroExtended() {
        let m = Machine(.long64, code: [0x0F, 0xC7] + LoopAssembler.absolute(1, 0x2000) + [hlt])
        m.store64(0x2000, 0x8765_4321_1234_5678)
        m[.rax] = 0xFFFF_FFFF_0000_0001
        m[.rdx] = 0xFFFF_FFFF_0000_0002
        #expect(m.run() == .halt)
        #expect(m.load64(0x2000) == 0x8765_4321_1234_5678)
        #expect(m[.rax] == 0x1234_5678 && m[.rdx] == 0x8765_4321)
        #expect(m.flags & RFLAGS.zf == 0)
    }

    @Test func cmpxchg16bComparesAndExchangesSixteenBytes() {
        // cmpxchg16b [0x2000] twice: equal, then unequal (RDX:RAX is not the new value).
        let instruction: [UInt8] = [0x48, 0x0F, 0xC7] + LoopAssembler.absolute(1, 0x2000)
        let m = Machine(.long64, code: instruction + instruction + [hlt])
        m.store64(0x2000, 0x1111)
        m.store64(0x2008, 0x2222)
        m[.rax] = 0x1111
        m[.rdx] = 0x2222
        m[.rbx] = 0xAAAA_0000_0000_0001
        m[.rcx] = 0xBBBB_0000_0000_0002
        #expect(m.run() == .halt)
        #expect(m.load64(0x2000) == 0xAAAA_0000_0000_0001 && m.load64(0x2008) == 0xBBBB_0000_0000_0002)
        #expect(m[.rax] == 0xAAAA_0000_0000_0001 && m[.rdx] == 0xBBBB_0000_0000_0002)
        #expect(m.flags & RFLAGS.zf == 0)
    }

    @Test func cmpxchg16bOnAnOperandNotSixteenByteAlignedIsGeneralProtection() {
        let m = Machine(.long64, code: [0xF0, 0x48, 0x0F, 0xC7] + LoopAssembler.absolute(1, 0x2008) + [hlt])
        #expect(m.run() == .exception(vector: 13, errorCode: 0))
        #expect(m.cpu.state.rip == Machine.codeAddress)
    }

    @Test(arguments: [[UInt8]([0x0F, 0xC7, 0xC8]), [0x48, 0x0F, 0xC7, 0xC8], [0x0F, 0xC7, 0x10]])
    func group9WithRegisterOperandOrOtherMemberIsUndefined(code: [UInt8]) {
        // cmpxchg8b eax, cmpxchg16b rax, 0F C7 /2
        let m = Machine(.long64, code: code + [hlt])
        #expect(m.run() == .exception(vector: 6, errorCode: nil))
    }
}

@Suite("X86 bit scans, counts and byte swaps")
struct BitScanTests {
    /// `code` (operating on rax, rbx) in 64-bit mode with RAX = `destination`, RBX = `source`, after STC.
    func run(_ code: [UInt8], destination: UInt64 = 0xDEAD_BEEF_DEAD_BEEF, source: UInt64) -> Machine {
        let m = Machine(.long64, code: [0xF9] + code + [hlt])
        m[.rax] = destination
        m[.rbx] = source
        #expect(m.run() == .halt)
        return m
    }

    @Test func bsfAndBsrFindTheLowestAndHighestSetBit() {
        #expect(run([0x48, 0x0F, 0xBC, 0xC3], source: 0x0000_0000_0001_0100)[.rax] == 8)
        #expect(run([0x48, 0x0F, 0xBD, 0xC3], source: 0x0000_0000_0001_0100)[.rax] == 16)
        #expect(run([0x48, 0x0F, 0xBD, 0xC3], source: 1 << 63)[.rax] == 63)
        #expect(run([0x48, 0x0F, 0xBC, 0xC3], source: 1)[.rax] == 0)
        // 32-bit: the upper half of the source does not count, the result is zero-extended.
        #expect(run([0x0F, 0xBD, 0xC3], source: 0xFFFF_0000_8000_0000)[.rax] == 31)
        // 16-bit: the rest of RAX stays.
        #expect(run([0x66, 0x0F, 0xBC, 0xC3], source: 0x8000)[.rax] == 0xDEAD_BEEF_DEAD_000F)
        #expect(run([0x48, 0x0F, 0xBC, 0xC3], source: 4).flags & RFLAGS.zf == 0)
    }

    @Test(arguments: [[UInt8]([0x48, 0x0F, 0xBC, 0xC3]), [0x0F, 0xBD, 0xC3], [0x66, 0x0F, 0xBC, 0xC3]])
    func bitScanOfZeroSetsZFAndLeavesTheDestination(code: [UInt8]) {
        let m = run(code, source: 0xFFFF_0000_0000_0000 & (code.first == 0x48 ? 0 : ~0))
        #expect(m[.rax] == 0xDEAD_BEEF_DEAD_BEEF)
        #expect(m.flags & RFLAGS.zf != 0)
    }

    @Test func bsfFromMemory() {
        let m = Machine(.protected32, code: [0x0F, 0xBC] + abs32(0, 0x2000) + [hlt])
        m.store64(0x2000, 0x0400_0000)
        #expect(m.run() == .halt)
        #expect(m[.rax] == 26)
    }

    @Test func popcntCountsBitsAndClearsAllFlagsButZF() {
        let all = run([0xF3, 0x48, 0x0F, 0xB8, 0xC3], source: ~0)
        #expect(all[.rax] == 64)
        #expect(all.flags == 0)
        let zero = run([0xF3, 0x48, 0x0F, 0xB8, 0xC3], source: 0)
        #expect(zero[.rax] == 0)
        #expect(zero.flags == flags("Z"))
        #expect(run([0xF3, 0x0F, 0xB8, 0xC3], source: 0xFFFF_FFFF_0000_0101)[.rax] == 2)
        #expect(run([0x66, 0xF3, 0x0F, 0xB8, 0xC3], source: 0xFFFF_FFFF)[.rax] == 0xDEAD_BEEF_DEAD_0010)
    }

    @Test func jmpeEncodingWithoutF3IsUndefined() {
        let m = Machine(.long64, code: [0x0F, 0xB8, 0xC3, hlt])
        #expect(m.run() == .exception(vector: 6, errorCode: nil))
    }

    @Test func lzcntCountsLeadingZerosWithCarryForZeroSource() {
        let zero = run([0xF3, 0x48, 0x0F, 0xBD, 0xC3], source: 0)
        #expect(zero[.rax] == 64)
        #expect(zero.flags & (RFLAGS.cf | RFLAGS.zf) == RFLAGS.cf)
        let top = run([0xF3, 0x48, 0x0F, 0xBD, 0xC3], source: 1 << 63)
        #expect(top[.rax] == 0)
        #expect(top.flags & (RFLAGS.cf | RFLAGS.zf) == RFLAGS.zf)
        #expect(run([0xF3, 0x48, 0x0F, 0xBD, 0xC3], source: 1)[.rax] == 63)
        #expect(run([0xF3, 0x0F, 0xBD, 0xC3], source: 0x1_0000_0000)[.rax] == 32)
        #expect(run([0x66, 0xF3, 0x0F, 0xBD, 0xC3], source: 0x00FF)[.rax] == 0xDEAD_BEEF_DEAD_0008)
    }

    /// BMI1 is not advertised, so TZCNT's encoding is BSF: a zero source
    /// leaves the destination (TZCNT would write the operand size).
    @Test func repBsfIsBsfWithoutBMI1() {
        let m = run([0xF3, 0x48, 0x0F, 0xBC, 0xC3], source: 0)
        #expect(m[.rax] == 0xDEAD_BEEF_DEAD_BEEF)
        #expect(m.flags & RFLAGS.zf != 0)
        #expect(run([0xF3, 0x48, 0x0F, 0xBC, 0xC3], source: 0x10)[.rax] == 4)
    }

    @Test func bswapReversesBytesAndClearsA16BitOperand() {
        let value: UInt64 = 0x1122_3344_5566_7788
        #expect(run([0x0F, 0xC8], destination: value, source: 0)[.rax] == 0x8877_6655)
        #expect(run([0x48, 0x0F, 0xC8], destination: value, source: 0)[.rax] == 0x8877_6655_4433_2211)
        #expect(run([0x66, 0x0F, 0xC8], destination: value, source: 0)[.rax] == 0x1122_3344_5566_0000)
        let m = Machine(.long64, code: [0x49, 0x0F, 0xC9, hlt])  // bswap r9
        m[.r9] = value
        #expect(m.run() == .halt)
        #expect(m[.r9] == 0x8877_6655_4433_2211)
        #expect(m.flags == 0)
    }
}

@Suite("X86 SHLD and SHRD")
struct DoubleShiftTests {
    /// shld/shrd eax, ebx (ModRM D8) in 64-bit mode, `prefix` choosing the width.
    func run(_ code: [UInt8], a: UInt64, b: UInt64, cl: UInt64 = 0, carry: Bool = false) -> Machine {
        let m = Machine(.long64, code: [carry ? 0xF9 : 0xF8] + code + [hlt])
        m[.rax] = a
        m[.rbx] = b
        m[.rcx] = cl
        #expect(m.run() == .halt)
        return m
    }

    @Test func shldShiftsInFromTheSourceAndCarriesTheLastBitOut() {
        let m = run([0x0F, 0xA4, 0xD8, 4], a: 0x1234_5678, b: 0x9ABC_DEF0)
        #expect(m[.rax] == 0x2345_6789)
        #expect(m.flags & ~UndefinedFlags.doubleShift(count: 4, width: 32) == flags("C"))
    }

    @Test func shldByOneSetsOverflowOnASignChange() {
        let m = run([0x0F, 0xA4, 0xD8, 1], a: 0x4000_0000, b: 0x8000_0000)
        #expect(m[.rax] == 0x8000_0001)
        #expect(m.flags & ~UndefinedFlags.doubleShift(count: 1, width: 32) == flags("OS"))
    }

    @Test func shrdShiftsRightFillingFromTheSource() {
        let m = run([0x0F, 0xAC, 0xD8, 4], a: 0x1234_5678, b: 0x9ABC_DEF5)
        #expect(m[.rax] == 0x5123_4567)
        #expect(m.flags & ~UndefinedFlags.doubleShift(count: 4, width: 32) == flags("C"))
        let one = run([0x0F, 0xAD, 0xD8], a: 0x8000_0001, b: 0, cl: 1)  // shrd eax, ebx, cl
        #expect(one[.rax] == 0x4000_0000)
        #expect(one.flags & ~UndefinedFlags.doubleShift(count: 1, width: 32) == flags("OPC"))
    }

    @Test func sixtyFourBitCountsUpToSixtyThree() {
        let m = run([0x48, 0x0F, 0xA4, 0xD8, 63], a: 1, b: ~0)
        #expect(m[.rax] == ~0)
        #expect(m.flags & ~UndefinedFlags.doubleShift(count: 63, width: 64) == flags("SP"))
        let right = run([0x48, 0x0F, 0xAC, 0xD8, 63], a: 1 << 63, b: 3)
        #expect(right[.rax] == 7)
        #expect(right.flags & RFLAGS.cf == 0)
    }

    /// The count is masked to 5 bits (6 with REX.W): 32 and 64 are 0, which
    /// changes no flag (and writes a 32-bit register, zero-extending it).
    @Test func maskedCountOfZeroChangesNothing() {
        let thirtyTwo = run([0x0F, 0xA4, 0xD8, 32], a: 0xFFFF_FFFF_1234_5678, b: ~0, carry: true)
        #expect(thirtyTwo[.rax] == 0x1234_5678)
        #expect(thirtyTwo.flags == flags("C"))
        let sixtyFour = run([0x48, 0x0F, 0xAC, 0xD8, 64], a: 0x1234, b: ~0, carry: true)
        #expect(sixtyFour[.rax] == 0x1234)
        #expect(sixtyFour.flags == flags("C"))
        let thirtyThree = run([0x0F, 0xA4, 0xD8, 33], a: 0x4000_0000, b: 0x8000_0000)
        #expect(thirtyThree[.rax] == 0x8000_0001)
    }

    @Test func sixteenBitShiftOfSixteenTakesTheSource() {
        let m = run([0x66, 0x0F, 0xA4, 0xD8, 16], a: 0xFFFF_1234, b: 0xABCD)
        #expect(m[.rax] == 0xFFFF_ABCD)
        #expect(m.flags & RFLAGS.cf == 0)  // bit 0 of 0x1234
    }

    @Test func shrdOnMemoryByCL() {
        // shrd [0x2000], ebx, cl
        let m = Machine(.protected32, code: [0x0F, 0xAD] + abs32(3, 0x2000) + [hlt])
        m.store64(0x2000, 0x0000_00F0)
        m[.rbx] = 0xF
        m[.rcx] = 8
        #expect(m.run() == .halt)
        #expect(m.load64(0x2000) == 0x0F00_0000)
    }
}

@Suite("X86 ENTER, PUSHA, POPA")
struct StackFrameTests {
    @Test func enterWithoutNestingPushesFramePointerAndAllocates() {
        let m = Machine(.protected32, code: [0xC8, 0x08, 0x00, 0x00, hlt])  // enter 8, 0
        m[.rbp] = 0x7F00
        #expect(m.run() == .halt)
        #expect(m.load64(0x7FFC) & 0xFFFF_FFFF == 0x7F00)
        #expect(m[.rbp] == 0x7FFC)
        #expect(m[.rsp] == 0x7FF4)
    }

    @Test func enterWithLevelOnePushesTheNewFramePointer() {
        let m = Machine(.protected32, code: [0xC8, 0x08, 0x00, 0x01, hlt])
        m[.rbp] = 0x7F00
        #expect(m.run() == .halt)
        #expect(m.load64(0x7FF8) == 0x7F00_0000_7FFC)
        #expect(m[.rbp] == 0x7FFC)
        #expect(m[.rsp] == 0x7FF0)
    }

    /// Level 3: the enclosing frame's two saved frame pointers, read below
    /// the old EBP, are copied, then the new frame pointer is pushed.
    @Test func enterWithLevelThreeCopiesEnclosingFramePointers() {
        let m = Machine(.protected32, code: [0xC8, 0x04, 0x00, 0x03, hlt])
        m[.rbp] = 0x7F00
        m.store64(0x7EF8, 0x0000_AAAA_0000_BBBB)  // [0x7EFC] = 0xAAAA, [0x7EF8] = 0xBBBB
        #expect(m.run() == .halt)
        #expect(m.load64(0x7FF8) == 0x7F00_0000_AAAA)
        #expect(m.load64(0x7FF0) == 0xBBBB_0000_7FFC)
        #expect(m[.rbp] == 0x7FFC)
        #expect(m[.rsp] == 0x7FEC)
    }

    @Test func enterInRealModeUsesWords() {
        let m = Machine(code: [0xC8, 0x10, 0x00, 0x02, hlt])  // enter 16, 2
        m[.rbp] = 0x7F00
        m.store64(0x7EF8, 0x1234 << 48)  // [0x7EFE] = 0x1234
        #expect(m.run() == .halt)
        #expect(m.load64(0x7FF8) == 0x7F00_1234_7FFE << 16)
        #expect(m[.rbp] == 0x7FFE)
        #expect(m[.rsp] == 0x7FFA - 0x10)
    }

    @Test func enterInLongModeUsesQuadwords() {
        let m = Machine(.long64, code: [0xC8, 0x20, 0x00, 0x02, hlt])  // enter 32, 2
        m[.rbp] = 0x7F00
        m.store64(0x7EF8, 0x1122_3344_5566_7788)
        #expect(m.run() == .halt)
        #expect(m.load64(0x7FF8) == 0x7F00)
        #expect(m.load64(0x7FF0) == 0x1122_3344_5566_7788)
        #expect(m.load64(0x7FE8) == 0x7FF8)
        #expect(m[.rbp] == 0x7FF8)
        #expect(m[.rsp] == 0x7FE8 - 0x20)
    }

    @Test func enterThatFaultsLeavesStackAndFramePointers() {
        // The stack page above 1 MiB is not mapped.
        let m = Machine(.long64, code: [0xC8, 0x08, 0x00, 0x00, hlt])
        m[.rsp] = 0x10_1000
        m[.rbp] = 0x1234
        #expect(m.run() == .exception(vector: 14, errorCode: 2))
        #expect(m[.rsp] == 0x10_1000 && m[.rbp] == 0x1234)
    }

    @Test func pushaThenPopaRestoresAllButTheStackPointerSlot() {
        // pushad; (clobber registers and the saved ESP slot); popad
        let clobber: [UInt8] = [0x31, 0xC0, 0x31, 0xC9, 0x31, 0xD2, 0x31, 0xDB, 0x31, 0xED, 0x31, 0xF6, 0x31, 0xFF]
        let m = Machine(.protected32, code: [0x60, hlt] + clobber + [0x61, hlt])
        let values: [GPR: UInt64] = [.rax: 1, .rcx: 2, .rdx: 3, .rbx: 4, .rbp: 6, .rsi: 7, .rdi: 8]
        for (register, value) in values { m[register] = value }
        #expect(m.run() == .halt)
        #expect(m[.rsp] == 0x7FE0)
        let saved = (0..<8).map { m.load64(0x7FE0 + UInt64($0 * 4)) & 0xFFFF_FFFF }
        #expect(saved == [8, 7, 6, 0x8000, 4, 3, 2, 1])
        m.write([0x11, 0x11, 0, 0], at: 0x7FEC)
        #expect(m.run() == .halt)
        for (register, value) in values { #expect(m[register] == value, "\(register)") }
        #expect(m[.rsp] == 0x8000)
    }

    @Test func pushaInRealModePushesWords() {
        let m = Machine(code: [0x60, hlt])
        m[.rax] = 0x1_0001
        m[.rdi] = 0x8888
        #expect(m.run() == .halt)
        #expect(m[.rsp] == 0x7FF0)
        #expect(m.load64(0x7FF0) & 0xFFFF == 0x8888)
        #expect(m.load64(0x7FFE) & 0xFFFF == 1)
    }

    @Test(arguments: [UInt8(0x60), 0x61])
    func pushaAndPopaAreUndefinedIn64BitMode(opcode: UInt8) {
        let m = Machine(.long64, code: [opcode, hlt])
        #expect(m.run() == .exception(vector: 6, errorCode: nil))
    }
}

@Suite("X86 far pointer loads, BOUND, INTO, XLAT, MOVNTI")
struct LegacyIntegerTests {
    @Test func ldsAndLssLoadSegmentAndOffsetInRealMode() {
        // lss esp, [0x2010] (66: a 32-bit offset); lds si, [0x2000] (after, as it moves DS)
        let m = Machine(code: [0x66, 0x0F, 0xB2] + abs16(4, 0x2010) + [0xC5] + abs16(6, 0x2000) + [hlt])
        m.store64(0x2000, 0x5678_1234)
        m.store64(0x2010, 0x0000_0700_0000_9000)
        #expect(m.run() == .halt)
        #expect(m[.rsi] == 0x1234)
        #expect(m.cpu.state.ds.selector == 0x5678 && m.cpu.state.ds.base == 0x56780)
        #expect(m[.rsp] == 0x9000)
        #expect(m.cpu.state.ss.selector == 0x700 && m.cpu.state.ss.base == 0x7000)
    }

    @Test func lesLfsLgsInProtectedModeReadTheGDTAndFaultBeforeWriting() {
        // GDT: null, code, data (0x10), a not-present data segment (0x18).
        let m = Machine(.protected32, code: [0x0F, 0xB4] + abs32(0, 0x2000) + [0xC4] + abs32(1, 0x2008)
                        + [0x0F, 0xB5] + abs32(2, 0x2010) + [hlt])
        for (i, d) in [0, 0x00CF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF, 0x00CF_1300_0000_FFFF].enumerated() {
            m.store64(0x500 + UInt64(i * 8), UInt64(d))
        }
        m.cpu.state.gdtr = DescriptorTableRegister(base: 0x500, limit: 31)
        m.store64(0x2000, 0x0010_1111_1111)
        m.store64(0x2008, 0x0010_2222_2222)
        m.store64(0x2010, 0x0018_3333_3333)
        m[.rdx] = 0x77
        #expect(m.run() == .exception(vector: 11, errorCode: 0x18))
        #expect(m[.rax] == 0x1111_1111 && m.cpu.state.fs.selector == 0x10)
        #expect(m[.rcx] == 0x2222_2222 && m.cpu.state.es.selector == 0x10)
        #expect(m[.rdx] == 0x77 && m.cpu.state.gs.selector != 0x18)
    }

    @Test(arguments: [(Machine.Setup.real, [UInt8]([0xC4, 0xC0])), (.long64, [0xC5, 0x06, 0x00, 0x20]), (.long64, [0x0F, 0xB2, 0xC0])])
    func farPointerLoadsWithARegisterOperandOrVEXOpcodeAreUndefined(setup: Machine.Setup, code: [UInt8]) {
        let m = Machine(setup, code: code + [hlt])
        #expect(m.run() == .exception(vector: 6, errorCode: nil))
    }

    @Test func lfsWithREXWLoadsASixtyFourBitOffset() {
        let m = Machine(.long64, code: [0x48, 0x0F, 0xB4] + LoopAssembler.absolute(0, 0x2000) + [hlt])
        m.store64(0x2000, 0x1122_3344_5566_7788)
        m.store64(0x2008, 0)  // the null selector
        m.cpu.state.fs.base = 0x1234
        #expect(m.run() == .halt)
        #expect(m[.rax] == 0x1122_3344_5566_7788)
        #expect(m.cpu.state.fs.selector == 0)
    }

    @Test func boundPassesInsideAndRaisesBRAtTheInstructionOutside() {
        // bound eax, [0x2000] with the signed bounds -5 and 10
        let code = [0x62] + abs32(0, 0x2000) + [hlt]
        for (index, inside) in [(UInt64(3), true), (10, true), (0xFFFF_FFFB, true), (11, false), (0xFFFF_FFFA, false)] {
            let m = Machine(.protected32, code: code)
            m.store64(0x2000, 0x0000_000A_FFFF_FFFB)
            m[.rax] = index
            #expect(m.run() == (inside ? .halt : .exception(vector: 5, errorCode: nil)), "index \(index)")
            if !inside { #expect(m.cpu.state.rip == Machine.codeAddress) }
        }
    }

    @Test func boundWithWordsInRealMode() {
        let m = Machine(code: [0x62] + abs16(0, 0x2000) + [hlt])
        m.store64(0x2000, 0x0020_0010)
        m[.rax] = 0xFFFF_0021  // the upper half of EAX does not take part
        #expect(m.run() == .exception(vector: 5, errorCode: nil))
    }

    @Test(arguments: [[UInt8]([0x62, 0x05, 0x00, 0x20, 0x00, 0x00]), [0xCE], [0x27]])
    func boundIntoAndDaaAreUndefinedIn64BitMode(code: [UInt8]) {
        let m = Machine(.long64, code: code + [hlt])
        #expect(m.run() == .exception(vector: 6, errorCode: nil))
    }

    @Test func intoTrapsThroughVectorFourOnlyWithOverflow() {
        // mov al, 0x7F; add al, 1 (OF = 1); into; hlt — the handler at 0x3000 halts.
        let m = Machine(code: [0xB0, 0x7F, 0x04, 0x01, 0xCE, hlt])
        m.store64(4 * 4, 0x0000_3000)
        m.write([hlt], at: 0x3000)
        #expect(m.run() == .halt)
        #expect(m.cpu.state.rip == 0x3001)
        #expect(m.load64(0x7FFA) & 0xFFFF == Machine.codeAddress + 5)  // the return address is past INTO
        let none = Machine(code: [0xCE, hlt])
        #expect(none.run() == .halt)
        #expect(none.cpu.state.rip == Machine.codeAddress + 2)
    }

    @Test func xlatIndexesTheTableAtBXWithAL() {
        // xlat; 67 xlat (EBX + AL); 26 xlat (ES)
        let m = Machine(code: [0xD7, hlt, 0x67, 0xD7, hlt, 0x26, 0xD7, hlt])
        m.write([0x42], at: 0x2005)
        m.write([0x07], at: 0x1_2042)
        m.write([0x99], at: 0x1000 + 0x2007)
        m[.rbx] = 0x2000
        m[.rax] = 0x1205
        #expect(m.run() == .halt)
        #expect(m[.rax] == 0x1242)
        // 67: EBX + AL = 0x12042, beyond real mode's 64 KiB segment limit.
        m[.rbx] = 0x1_2000
        #expect(m.run() == .exception(vector: 13, errorCode: 0))
        #expect(m[.rax] == 0x1242)
        m.cpu.state.rip += 2
        #expect(m.run() == .halt)
        m[.rbx] = 0x2000
        m[.rax] = 0x1207
        m.cpu.state.es = .realMode(selector: 0x100)
        #expect(m.run() == .halt)
        #expect(m[.rax] == 0x1299)
    }

    @Test func movntiStoresAndNeedsMemoryAndNoPrefix() {
        let m = Machine(.long64, code: [0x48, 0x0F, 0xC3] + LoopAssembler.absolute(3, 0x2000) + [hlt])
        m[.rbx] = 0x1122_3344_5566_7788
        #expect(m.run() == .halt)
        #expect(m.load64(0x2000) == 0x1122_3344_5566_7788)
        #expect(Machine(.long64, code: [0x0F, 0xC3, 0xD8, hlt]).run() == .exception(vector: 6, errorCode: nil))
        #expect(Machine(.long64, code: [0x66, 0x0F, 0xC3, 0x18, hlt]).run() == .exception(vector: 6, errorCode: nil))
    }

    @Test func prefetchHintsDoNothing() {
        let m = Machine(.protected32, code: [0x0F, 0x0D, 0x0D, 0x00, 0x00, 0x00, 0xF0, 0x0F, 0x0D, 0x08, hlt])
        #expect(m.run() == .halt)
    }
}

@Suite("X86 decimal adjustments")
struct DecimalAdjustTests {
    /// `code` in real mode from AX = `ax`, with the decimal flags the
    /// manuals leave undefined masked out of the result.
    func run(_ code: [UInt8], ax: UInt64 = 0, undefined: UInt64) -> (ax: UInt64, flags: UInt64) {
        let m = Machine(code: code + [hlt])
        m[.rax] = ax
        #expect(m.run() == .halt)
        return (m[.rax], m.flags & ~undefined)
    }

    @Test func daaAdjustsAPackedSum() {
        // 79 + 35 = 114: add al, bl gives 0xAE; DAA makes it 0x14 with a carry.
        let m = run([0xB0, 0x79, 0xB3, 0x35, 0x00, 0xD8, 0x27], undefined: UndefinedFlags.decimalAdjust)
        #expect(m.ax == 0x14)
        #expect(m.flags == flags("APC"))
        // 0x38 + 0x45 = 0x7D: only the low digit needs 6; no carry.
        let low = run([0xB0, 0x38, 0x04, 0x45, 0x27], undefined: UndefinedFlags.decimalAdjust)
        #expect(low.ax == 0x83)
        #expect(low.flags == flags("SA"))
        // 0x99 + 0x01 = 0x9A: both digits, to 0x00 with a carry.
        let wrap = run([0xB0, 0x99, 0x04, 0x01, 0x27], undefined: UndefinedFlags.decimalAdjust)
        #expect(wrap.ax == 0x00)
        #expect(wrap.flags == flags("ZAPC"))
    }

    @Test func dasAdjustsAPackedDifference() {
        // 35 - 47 = -12: sub gives 0xEE with borrows; DAS makes it 0x88 (100 - 12) with a borrow.
        let m = run([0xB0, 0x35, 0x2C, 0x47, 0x2F], undefined: UndefinedFlags.decimalAdjust)
        #expect(m.ax == 0x88)
        #expect(m.flags == flags("SAPC"))
        let exact = run([0xB0, 0x47, 0x2C, 0x35, 0x2F], undefined: UndefinedFlags.decimalAdjust)
        #expect(exact.ax == 0x12)
        #expect(exact.flags == flags("P"))
    }

    @Test func aaaAndAasAdjustUnpackedDigits() {
        // 9 + 8 = 17: AH 1, AL 7.
        let sum = run([0x04, 0x08, 0x37], ax: 0x0009, undefined: UndefinedFlags.asciiAdjust)
        #expect(sum.ax == 0x0107)
        #expect(sum.flags == flags("AC"))
        // 12 - 5 = 7 (AH 1 AL 2 minus 5).
        let difference = run([0x2C, 0x05, 0x3F], ax: 0x0102, undefined: UndefinedFlags.asciiAdjust)
        #expect(difference.ax == 0x0007)
        #expect(difference.flags == flags("AC"))
        // 3 + 4: no adjustment, the high nibble of AL cleared.
        let plain = run([0x04, 0x34, 0x37], ax: 0x0503, undefined: UndefinedFlags.asciiAdjust)
        #expect(plain.ax == 0x0507)
        #expect(plain.flags == 0)
    }

    @Test func aamAndAadConvertBetweenBinaryAndUnpackedDigits() {
        let aam = run([0xD4, 0x0A], ax: 0xFF4F, undefined: UndefinedFlags.asciiMultiplyDivide)  // 79
        #expect(aam.ax == 0x0709)
        #expect(aam.flags == flags("P"))
        let hex = run([0xD4, 0x10], ax: 0x00FF, undefined: UndefinedFlags.asciiMultiplyDivide)
        #expect(hex.ax == 0x0F0F)
        let aad = run([0xD5, 0x0A], ax: 0x0709, undefined: UndefinedFlags.asciiMultiplyDivide)
        #expect(aad.ax == 0x004F)
        #expect(aad.flags == 0)
        // AL = 0x80 after AAD: SF follows AL.
        let signed = run([0xD5, 0x10], ax: 0x0800, undefined: UndefinedFlags.asciiMultiplyDivide)
        #expect(signed.ax == 0x0080)
        #expect(signed.flags == flags("S"))
    }

    @Test func aamWithBaseZeroIsDivideError() {
        let m = Machine(code: [0xD4, 0x00, hlt])
        m[.rax] = 0x1234
        #expect(m.run() == .exception(vector: 0, errorCode: nil))
        #expect(m[.rax] == 0x1234)
    }

    @Test(arguments: [[UInt8]([0x27]), [0x2F], [0x37], [0x3F], [0xD4, 0x0A], [0xD5, 0x0A]])
    func decimalAdjustmentsAreUndefinedIn64BitMode(code: [UInt8]) {
        let m = Machine(.long64, code: code + [hlt])
        #expect(m.run() == .exception(vector: 6, errorCode: nil))
    }
}

@Suite("X86 LOCK prefix rules and locked accesses outside plain RAM")
struct LockPrefixTests {
    @Test(arguments: [
        [UInt8]([0xF0, 0x01, 0xD8]),                       // lock add eax, ebx: register destination
        [0xF0, 0x8B, 0x05, 0x00, 0x20, 0x00, 0x00],        // lock mov eax, [0x2000]
        [0xF0, 0x39, 0x1D, 0x00, 0x20, 0x00, 0x00],        // lock cmp [0x2000], ebx
        [0xF0, 0x0F, 0xA3, 0x1D, 0x00, 0x20, 0x00, 0x00],  // lock bt [0x2000], ebx
        [0xF0, 0x0F, 0xBA, 0x25, 0x00, 0x20, 0x00, 0x00, 1],  // lock bt [0x2000], 1
        [0xF0, 0x0F, 0xC7, 0xC8],                          // lock cmpxchg8b eax
        [0xF0, 0x0F, 0xB1, 0xD8],                          // lock cmpxchg eax, ebx
        [0xF0, 0x0F, 0xBC, 0x05, 0x00, 0x20, 0x00, 0x00],  // lock bsf eax, [0x2000]
    ])
    func lockOnAnInstructionThatIsNotAMemoryReadModifyWriteIsUndefined(code: [UInt8]) {
        let m = Machine(.protected32, code: code + [hlt])
        #expect(m.run() == .exception(vector: 6, errorCode: nil))
    }

    @Test func lockedFormsComputeAsTheirPlainForms() {
        // lock adc [0x2000], ebx (with CF); lock neg dword [0x2004]; lock btc [0x2008], 33 → bit 1;
        // lock xadd [0x200C], ecx; lock dec byte [0x2010]; lock not word [0x2012]
        let code: [UInt8] = [0xF9, 0xF0, 0x11] + abs32(3, 0x2000) + [0xF0, 0xF7] + abs32(3, 0x2004)
            + [0xF0, 0x0F, 0xBA] + abs32(7, 0x2008) + [33] + [0xF0, 0x0F, 0xC1] + abs32(1, 0x200C)
            + [0xF0, 0xFE] + abs32(1, 0x2010) + [0x66, 0xF0, 0xF7] + abs32(2, 0x2012) + [hlt]
        let m = Machine(.protected32, code: code)
        m.store64(0x2000, 0x0000_0001_FFFF_FFFF)  // [0x2000] = -1, [0x2004] = 1
        m.store64(0x2008, 0x0000_0010_0000_0003)  // [0x2008] = 3, [0x200C] = 0x10
        m.store64(0x2010, 0x0000_0000_F0F0_0000)  // [0x2010] = 0 (byte), [0x2012] = 0xF0F0
        m[.rbx] = 1
        m[.rcx] = 5
        #expect(m.run() == .halt)
        #expect(m.load64(0x2000) == 0xFFFF_FFFF_0000_0001)  // -1 + 1 + 1 = 1; neg 1 = -1
        #expect(m.load64(0x2008) == 0x0000_0015_0000_0001)
        #expect(m[.rcx] == 0x10)
        #expect(m.load64(0x2010) & 0xFFFF_FFFF == 0x0F0F_00FF)
        #expect(m.flags & ~RFLAGS.af == flags("SP"))  // dec 0 → 0xFF: the last flag writer before NOT
    }

    /// A ModRM operand outside RAM: the locked access takes the ordinary
    /// path, reading through an MMIO exit and writing through another.
    @Test func lockedOperandInMMIOReadsThenWritesThroughExits() {
        let m = Machine(.protected32, code: [0xF0, 0x01] + abs32(3, 0xF000_0000) + [hlt])
        m[.rbx] = 0x10
        #expect(m.run() == .mmio(MMIOExit(address: 0xF000_0000, size: 4, isWrite: false, data: 0)))
        m.cpu.completeMMIORead(address: 0xF000_0000, value: 0x32)
        #expect(m.run() == .mmio(MMIOExit(address: 0xF000_0000, size: 4, isWrite: true, data: 0x42)))
        #expect(m.run() == .halt)
    }

    /// A read-only slot: the write of a locked update is an MMIO exit and the
    /// memory stays; a failing LOCK CMPXCHG there still shows its write cycle.
    @Test func lockedOperandInAReadOnlySlotWritesThroughAnExit() {
        let m = Machine(.protected32, code: [0xF0, 0xFF] + abs32(0, 0x2000) + [0xF0, 0x0F, 0xB1] + abs32(3, 0x2004) + [hlt])
        let base = m.memory
        m.cpu.memory = PhysicalMemory(ranges: [
            PhysicalRange(guestAddress: 0, size: 0x2000, host: base),
            PhysicalRange(guestAddress: 0x2000, size: 0x1000, host: base + 0x2000, readOnly: true),
            PhysicalRange(guestAddress: 0x3000, size: UInt64(Machine.memorySize - 0x3000), host: base + 0x3000),
        ])
        m.store64(0x2000, 0x0000_0009_0000_0041)
        m[.rax] = 1
        #expect(m.run() == .mmio(MMIOExit(address: 0x2000, size: 4, isWrite: true, data: 0x42)))
        #expect(m.load64(0x2000) & 0xFFFF_FFFF == 0x41)
        #expect(m.run() == .mmio(MMIOExit(address: 0x2004, size: 4, isWrite: true, data: 9)))
        #expect(m[.rax] == 9)
        #expect(m.run() == .halt)
    }

    @Test func lockedWriteMarksTheDirtyLog() {
        let m = Machine(.protected32, code: [0xF0, 0x0F, 0xC1] + abs32(3, 0x5008) + [hlt])
        let bitmap = UnsafeMutablePointer<UInt64>.allocate(capacity: Machine.memorySize / 4096 / 64)
        bitmap.initialize(repeating: 0, count: Machine.memorySize / 4096 / 64)
        defer { bitmap.deallocate() }
        m.cpu.memory = PhysicalMemory(ranges: [
            PhysicalRange(guestAddress: 0, size: UInt64(Machine.memorySize), host: m.memory, dirtyBitmap: bitmap),
        ])
        #expect(m.run() == .halt)
        #expect(bitmap[0] == 1 << 5)
    }

    /// A locked access is a write: on a read-only page it faults with the W
    /// bit even when a CMPXCHG would leave the value as it was.
    @Test func failingLockCmpxchgOnAReadOnlyPageIsAWritePageFault() {
        let m = Machine(.long64, code: [0xF0, 0x0F, 0xB1] + LoopAssembler.absolute(3, 0x2000) + [hlt])
        m.cpu.state.cr0 |= ControlBits.cr0WP
        m.store64(Machine.pageTable + 2 * 8, 0x2000 | 5)  // present, user, not writable
        m.store64(0x2000, 5)
        m[.rax] = 6
        #expect(m.run() == .exception(vector: 14, errorCode: 3))
        #expect(m.cpu.state.cr2 == 0x2000)
        #expect(m[.rax] == 6)
    }
}

@Suite("X86 read-modify-write instructions fault as writes, before changing anything")
struct ReadModifyWriteFaultTests {
    /// `code` after STC in 64-bit mode with CR0.WP, the page at 0x2000
    /// mapped read-only (or not at all).
    func run(_ code: [UInt8], present: Bool = true) -> Machine {
        let m = Machine(.long64, code: [0xF9] + code + [hlt])
        m.cpu.state.cr0 |= ControlBits.cr0WP
        m.store64(Machine.pageTable + 2 * 8, present ? 0x2000 | 5 : 0)
        m[.rax] = 1
        return m
    }

    @Test(arguments: [
        [UInt8]([0x11, 0x04, 0x25, 0x00, 0x20, 0x00, 0x00]),        // adc [0x2000], eax
        [0xD1, 0x14, 0x25, 0x00, 0x20, 0x00, 0x00],                 // rcl dword [0x2000], 1
        [0x83, 0x1C, 0x25, 0x00, 0x20, 0x00, 0x00, 0x05],           // sbb dword [0x2000], 5
        [0xF7, 0x1C, 0x25, 0x00, 0x20, 0x00, 0x00],                 // neg dword [0x2000]
        [0xFF, 0x04, 0x25, 0x00, 0x20, 0x00, 0x00],                 // inc dword [0x2000]
        [0x0F, 0xAB, 0x04, 0x25, 0x00, 0x20, 0x00, 0x00],           // bts [0x2000], eax
        [0x0F, 0xA4, 0x04, 0x25, 0x00, 0x20, 0x00, 0x00, 0x03],     // shld [0x2000], eax, 3
        [0x0F, 0xC1, 0x04, 0x25, 0x00, 0x20, 0x00, 0x00],           // xadd [0x2000], eax
        [0x0F, 0xB1, 0x04, 0x25, 0x00, 0x20, 0x00, 0x00],           // cmpxchg [0x2000], eax
        [0x87, 0x04, 0x25, 0x00, 0x20, 0x00, 0x00],                 // xchg [0x2000], eax
    ])
    func readModifyWriteOnAReadOnlyPageFaultsWithWAndKeepsFlags(code: [UInt8]) {
        let m = run(code)
        m.store64(0x2000, 0x7FFF_FFFF)
        #expect(m.run() == .exception(vector: 14, errorCode: 3))
        #expect(m.flags == flags("C"))
        #expect(m.load64(0x2000) == 0x7FFF_FFFF && m[.rax] == 1)
    }

    @Test func readModifyWriteOnAnAbsentPageFaultsAsAWrite() {
        #expect(run([0xFF, 0x04, 0x25, 0x00, 0x20, 0x00, 0x00], present: false).run() == .exception(vector: 14, errorCode: 2))
    }

    @Test func compareAndTestOnAReadOnlyPageOnlyRead() {
        // cmp [0x2000], eax; test [0x2000], eax; bt [0x2000], eax
        let m = run([0x39, 0x04, 0x25, 0x00, 0x20, 0x00, 0x00, 0x85, 0x04, 0x25, 0x00, 0x20, 0x00, 0x00,
                     0x0F, 0xA3, 0x04, 0x25, 0x00, 0x20, 0x00, 0x00])
        #expect(m.run() == .halt)
    }
}
