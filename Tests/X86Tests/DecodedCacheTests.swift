import Foundation
import Testing
@testable import X86

/// The decoded-instruction cache and the host TLB must not be seen: code
/// written after it was decoded runs as written (Intel SDM 8.1.3), whoever
/// wrote it, and the cached paths give what the uncached one gives.
@Suite("X86 decoded-instruction cache")
struct DecodedCacheTests {
    /// `f` at `address`: mov cl, 1; ret.
    static let setCL: [UInt8] = [0xB1, 0x01, 0xC3]

    /// A near call from `from` (the call's address, 16-bit code) to `to`.
    static func call(from: UInt64, to: UInt64) -> [UInt8] {
        let displacement = UInt16(truncatingIfNeeded: to &- (from + 3))
        return [0xE8, UInt8(displacement & 0xFF), UInt8(displacement >> 8)]
    }

    /// mov byte [address], value (16-bit code).
    static func storeByte(_ address: UInt64, _ value: UInt8) -> [UInt8] {
        [0xC6, 0x06, UInt8(address & 0xFF), UInt8((address >> 8) & 0xFF), value]
    }

    @Test func storeIntoTheNextInstructionTakesEffectForIt() {
        let m = Machine(code: DecodedCacheTests.storeByte(0x1006, 0x02)  // 1000: the immediate of the next instruction
            + [0xB0, 0x01]                                                // 1005: mov al, 1
            + [hlt])
        #expect(m.run() == .halt)
        #expect(m[.rax] & 0xFF == 2)
    }

    /// Calls `f`, keeps CL in BL, runs `modify` (which changes f's immediate
    /// to 5), calls `f` again: the second call must run the new code.
    func runModifiedTwice(f: UInt64, modify: [UInt8]) -> Machine {
        var code = DecodedCacheTests.call(from: 0x1000, to: f) + [0x88, 0xCB]  // call f; mov bl, cl
        code += modify
        code += DecodedCacheTests.call(from: 0x1000 + UInt64(code.count), to: f) + [hlt]
        let m = Machine(code: code)
        m.write(DecodedCacheTests.setCL, at: f)
        #expect(m.run() == .halt)
        return m
    }

    @Test func storeIntoABlockThatRanBeforeOnTheSamePageTakesEffect() {
        let m = runModifiedTwice(f: 0x1080, modify: DecodedCacheTests.storeByte(0x1081, 5))
        #expect(m[.rbx] & 0xFF == 1)
        #expect(m[.rcx] & 0xFF == 5)
    }

    @Test func storeIntoCodeOnAnotherPageTakesEffect() {
        let m = runModifiedTwice(f: 0x3000, modify: DecodedCacheTests.storeByte(0x3001, 5))
        #expect(m[.rbx] & 0xFF == 1)
        #expect(m[.rcx] & 0xFF == 5)
    }

    @Test func stringStoreIntoCodeTakesEffect() {
        // mov di, 0x3001; mov al, 5; stosb
        let m = runModifiedTwice(f: 0x3000, modify: [0xBF, 0x01, 0x30, 0xB0, 0x05, 0xAA])
        #expect(m[.rbx] & 0xFF == 1)
        #expect(m[.rcx] & 0xFF == 5)
    }

    @Test func pushIntoCodeTakesEffect() {
        // mov sp, 0x3002; mov ax, 0x05B1; push ax: the word at 0x3000 becomes B1 05 (mov cl, 5)
        let m = runModifiedTwice(f: 0x3000, modify: [0xBC, 0x02, 0x30, 0xB8, 0xB1, 0x05, 0x50, 0xBC, 0x00, 0x80])
        #expect(m[.rbx] & 0xFF == 1)
        #expect(m[.rcx] & 0xFF == 5)
    }

    @Test func codeWrittenByAnotherCPUIsRunByTheNextRun() {
        let a = Machine(code: DecodedCacheTests.call(from: 0x1000, to: 0x3000) + [hlt])
        a.write(DecodedCacheTests.setCL, at: 0x3000)
        #expect(a.run() == .halt)
        #expect(a[.rcx] & 0xFF == 1)
        // A second CPU over the same memory rewrites f's immediate.
        var state = CPUState()
        state[.cs] = .realMode(selector: 0, code: true)
        state.rip = 0x5000
        var b = X86CPU(memory: PhysicalMemory(base: a.memory, size: Machine.memorySize), state: state)
        a.write(DecodedCacheTests.storeByte(0x3001, 7) + [hlt], at: 0x5000)
        #expect(b.run(maxInstructions: 10) == .halt)
        a.cpu.state.rip = 0x1000
        #expect(a.run() == .halt)
        #expect(a[.rcx] & 0xFF == 7)
    }

    @Test func codeWrittenByAnotherCPUIsSeenInTheNextSliceOfALoop() {
        // 1000: call f; cmp cl, 7; jne 1000; hlt
        let a = Machine(code: DecodedCacheTests.call(from: 0x1000, to: 0x3000) + [0x80, 0xF9, 0x07, 0x75, 0xF8, hlt])
        a.write(DecodedCacheTests.setCL, at: 0x3000)
        #expect(a.cpu.run(maxInstructions: 1000) == .instructionLimit)
        var state = CPUState()
        state[.cs] = .realMode(selector: 0, code: true)
        state.rip = 0x5000
        var b = X86CPU(memory: PhysicalMemory(base: a.memory, size: Machine.memorySize), state: state)
        a.write(DecodedCacheTests.storeByte(0x3001, 7) + [hlt], at: 0x5000)
        #expect(b.run(maxInstructions: 10) == .halt)
        #expect(a.cpu.run(maxInstructions: 1000) == .halt)
        #expect(a[.rcx] & 0xFF == 7)
    }

    /// The instruction after STI runs the uncached way (in STI's interrupt
    /// shadow); a listed one begins no code epoch there, as in a block, and
    /// a serializing one (CPUID) still does. A run begins one and ends one.
    @Test(arguments: [([UInt8]([0xB0, 0x07]), UInt64(2)), ([UInt8]([0x0F, 0xA2]), UInt64(3))] as [([UInt8], UInt64)])
    func instructionAfterSTIBeginsAnEpochOnlyWhenSerializing(next: [UInt8], epochs: UInt64) {
        let m = Machine(code: [0xFB] + next + [hlt])  // sti; mov al, 7 or cpuid
        let before = m.cpu.codeEpoch
        #expect(m.cpu.run(maxInstructions: 2) == .instructionLimit)
        #expect(m.cpu.state.rip == 0x1001 + UInt64(next.count))
        #expect(m.cpu.codeEpoch &- before == epochs)
    }

    /// A store made by the uncached instruction in STI's shadow into code
    /// decoded in the same epoch is seen by the code after it.
    @Test func storeIntoCachedCodeAfterSTIIsRun() {
        let m = Machine(code: [
            0xB3, 0x01,              // 1000: mov bl, 1
            0xFB,                    // 1002: sti
            0x88, 0x1E, 0x09, 0x10,  // 1003: mov [0x1009], bl (in the shadow: uncached)
            0x90,                    // 1007: nop
            0xB1, 0x00,              // 1008: mov cl, imm8 (0x1009)
            0x88, 0xCF,              // 100a: mov bh, cl
            0x80, 0xFB, 0x02,        // 100c: cmp bl, 2
            0x74, 0x04,              // 100f: je 1015
            0xFE, 0xC3,              // 1011: inc bl
            0xEB, 0xED,              // 1013: jmp 1002
            hlt,                     // 1015
        ])
        #expect(m.run() == .halt)
        #expect(m[.rcx] & 0xFF == 2)
        #expect(m[.rbx] == 0x0202)
    }

    @Test func codeWrittenByTheOwnerBetweenRunsIsRun() {
        let m = Machine(code: [0xB1, 0x01, hlt])  // mov cl, 1; hlt
        #expect(m.run() == .halt)
        m.write([0xB1, 0x03], at: 0x1000)
        m.cpu.state.rip = 0x1000
        #expect(m.run() == .halt)
        #expect(m[.rcx] & 0xFF == 3)
    }

    @Test func newMemoryUnderACachedPageIsRun() {
        let m = Machine(code: [0xB1, 0x01, hlt])
        #expect(m.run() == .halt)
        let other = UnsafeMutableRawPointer.allocate(byteCount: Machine.memorySize, alignment: 4096)
        defer { other.deallocate() }
        other.initializeMemory(as: UInt8.self, repeating: 0, count: Machine.memorySize)
        other.storeBytes(of: 0xB1, toByteOffset: 0x1000, as: UInt8.self)
        other.storeBytes(of: 0x02, toByteOffset: 0x1001, as: UInt8.self)
        other.storeBytes(of: hlt, toByteOffset: 0x1002, as: UInt8.self)
        m.cpu.memory = PhysicalMemory(base: other, size: Machine.memorySize)
        m.cpu.state.rip = 0x1000
        #expect(m.run() == .halt)
        #expect(m[.rcx] & 0xFF == 2)
    }

    @Test func steppingThroughACachedBlockMatchesTheUncachedPath() {
        let code: [UInt8] = [0xB8, 0x05, 0x00,  // mov ax, 5
                             0x01, 0xC3,        // add bx, ax
                             0x48,              // dec ax
                             0x75, 0xFB,        // jnz add
                             0x89, 0x1E, 0x00, 0x20,  // mov [0x2000], bx
                             hlt]
        func trace(cached: Bool) -> [UInt64] {
            let m = Machine(code: code)
            m.cpu.decodedCacheEnabled = cached
            if cached {
                // Decode the blocks first, then step through them from the start.
                #expect(m.run() == .halt)
                m.cpu.state.rip = 0x1000
                m[.rbx] = 0
                m.store64(0x2000, 0)
            }
            var rips: [UInt64] = []
            while m.cpu.run(maxInstructions: 1) == .instructionLimit { rips.append(m.cpu.state.rip) }
            return rips + [m[.rbx], m.load64(0x2000) & 0xFFFF]
        }
        #expect(trace(cached: true) == trace(cached: false))
        #expect(trace(cached: true).suffix(2) == [15, 15])
    }

    @Test func returnElsewhereThanTheCallLeavesTheTrace() {
        // 1000: call f; mov cl, 1; mov dl, 2; hlt — f skips the first MOV by
        // returning two bytes after its call, then the same again from the cache.
        var code = DecodedCacheTests.call(from: 0x1000, to: 0x1020) + [0xB1, 0x01, 0xB2, 0x02, hlt]
        code += [UInt8](repeating: 0x90, count: 0x20 - code.count)
        code += [0x58, 0x83, 0xC0, 0x02, 0x50, 0xC3]  // f: pop ax; add ax, 2; push ax; ret
        let m = Machine(code: code)
        for _ in 0..<2 {
            m.cpu.state.rip = 0x1000
            m[.rcx] = 0
            m[.rdx] = 0
            #expect(m.run() == .halt)
            #expect(m[.rcx] & 0xFF == 0)
            #expect(m[.rdx] & 0xFF == 2)
            #expect(m[.rsp] == 0x8000)
        }
    }

    @Test func faultInTheMiddleOfABlockStopsAtTheFaultingInstruction() {
        // mov ax, 1; mov bl, 0; div bl; hlt
        let m = Machine(code: [0xB8, 0x01, 0x00, 0xB3, 0x00, 0xF6, 0xF3, hlt])
        #expect(m.run() == .exception(vector: Vector.de.rawValue, errorCode: nil))
        #expect(m.cpu.state.rip == 0x1005)
    }

    /// The generated programs of the host comparisons, run with and without
    /// the cache: registers, RIP, all of RFLAGS and memory must agree at
    /// every checkpoint.
    @Test(arguments: [(Machine.Setup.real, UInt64(1)), (.real, 2), (.protected32, 21), (.long64, 31), (.long64, 32)])
    func cachedRunsMatchUncachedRuns(setup: Machine.Setup, seed: UInt64) {
        let points: [Checkpoint]
        switch setup {
        case .real: points = seed == 1 ? DifferentialProgram(code32: false).generate(seed: seed, count: 80)
                                       : MixedProgram.generate(seed: seed, count: 80)
        case .protected32: points = DifferentialProgram(code32: true).generate(seed: seed, count: 80)
        case .long64: points = LongModeProgram.generate(seed: seed, count: 80)
        }
        compareCachedWithUncached(points, setup: setup, seed: seed)
    }

    /// The memory, LEA, MOVZX and immediate-store forms that have handlers
    /// of their own, in 32- and 64-bit code.
    @Test(arguments: [(Machine.Setup.protected32, UInt64(41)), (.long64, 42), (.long64, 43)])
    func cachedMemoryFormsMatchUncachedRuns(setup: Machine.Setup, seed: UInt64) {
        compareCachedWithUncached(DecodedCacheTests.memoryForms(seed: seed, rex: setup == .long64), setup: setup, seed: seed)
    }

    /// Checkpoints of ALU r/m forms on [rbx + d8] (RBX in the data area at
    /// 0x2000), LEA with base, index and scale, MOVZX from AH-BH, SIL/DIL
    /// and memory, and MOV m, imm32, at operand size 4 and (with REX.W) 8.
    static func memoryForms(seed: UInt64, rex: Bool) -> [Checkpoint] {
        var rng = SplitMix64(state: seed)
        var points: [Checkpoint] = []
        for _ in 0..<80 {
            let w: [UInt8] = rex && rng.next() & 1 == 0 ? [0x48] : []
            let reg = UInt8([0, 1, 2, 5, 7][Int(rng.next() % 5)])
            let d8 = UInt8(rng.next() % 0x80) & ~7
            let imm = (0..<4).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            // mov ebx, 0x2000; mov esi, small; mov reg, random
            var code: [UInt8] = [0xBB, 0x00, 0x20, 0x00, 0x00, 0xBE, UInt8(rng.next() % 0x20), 0, 0, 0, 0xB8 + reg] + imm
            code += rng.next() & 1 == 0 ? [0xF8] : [0xF9]
            let op = UInt8(rng.next() % 8)
            var label = ""
            switch rng.next() % 6 {
            case 0:
                code += w + [op << 3 | 1, 0x43 | reg << 3, d8]  // op [rbx+d8], reg
                label = "alu/\(op) [rbx+\(d8)], r\(reg)"
            case 1:
                code += w + [op << 3 | 3, 0x43 | reg << 3, d8]  // op reg, [rbx+d8]
                label = "alu/\(op) r\(reg), [rbx+\(d8)]"
            case 2:
                let form: UInt8 = rng.next() & 1 == 0 ? 0x81 : 0x83
                code += w + [form, 0x43 | op << 3, d8] + (form == 0x81 ? imm : [imm[0]])  // op [rbx+d8], imm
                label = "group1 \(String(form, radix: 16))/\(op) [rbx+\(d8)]"
            case 3:
                let scale = UInt8(rng.next() % 4)
                code += w + [0x8D, 0x44 | reg << 3, scale << 6 | 6 << 3 | 3, d8]  // lea reg, [rbx+rsi*s+d8]
                label = "lea r\(reg), [rbx+rsi*\(1 << scale)+\(d8)]"
            case 4:
                let source: [UInt8]
                switch rng.next() % 3 {
                case 0: source = [0xE0 | reg << 3]  // AH
                case 1: source = rex ? [0xC6 | reg << 3] : [0xC3 | reg << 3]  // SIL with REX, BL without
                default: source = [0x43 | reg << 3, d8]
                }
                let prefix: [UInt8] = rex && source.count == 1 && source[0] & 7 == 6 ? [0x40 | (w.isEmpty ? 0 : 8)] : w
                code += prefix + [0x0F, rng.next() & 1 == 0 ? 0xB6 : 0xB7] + source
                label = "movzx r\(reg), \(source)"
            default:
                code += w + [0xC7, 0x43, d8] + imm  // mov [rbx+d8], imm32
                label = "mov [rbx+\(d8)], imm32"
            }
            // Read back what memory forms wrote.
            code += [0x8B, 0x43 | 1 << 3, d8]  // mov ecx, [rbx+d8]
            points.append(Checkpoint(code: code + DifferentialProgram.out, undefined: 0, label: label))
        }
        return points
    }

    /// The same through a pool that holds only a block or two, so that the
    /// cache is dropped again and again while the jump table and the blocks'
    /// successors still point at its slots.
    @Test(arguments: [(Machine.Setup.real, UInt64(12)), (.long64, 33)])
    func cachedRunsThroughATinyPoolMatchUncachedRuns(setup: Machine.Setup, seed: UInt64) {
        let points = setup == .real ? MixedProgram.generate(seed: seed, count: 80) : LongModeProgram.generate(seed: seed, count: 80)
        compareCachedWithUncached(points, setup: setup, seed: seed, poolCapacity: DecodedCacheStorage.maxBlockInstructions + 8)
    }

    @Test func loopThroughMoreBlocksThanThePoolHoldsRunsEachAsDecoded() {
        // 1000: mov cx, 50; 1003: inc bx (x9); jmp 2000 — 2000: inc dx (x8); dec cx; jnz 1003; hlt.
        // Decoding either block drops the other, which the jump table and
        // the successor links still name.
        let m = Machine(code: [0xB9, 0x32, 0x00] + [UInt8](repeating: 0x43, count: 9) + [0xE9, 0xF1, 0x0F])
        m.write([UInt8](repeating: 0x42, count: 8) + [0x49, 0x0F, 0x85, 0xF6, 0xEF, hlt], at: 0x2000)
        m.cpu.decodedStorage = DecodedCacheStorage(poolCapacity: DecodedCacheStorage.maxBlockInstructions + 8)
        m.cpu.decoded = DecodedCache(m.cpu.decodedStorage)
        #expect(m.run() == .halt)
        #expect(m[.rbx] == 9 * 50)
        #expect(m[.rdx] == 8 * 50)
    }

    func compareCachedWithUncached(_ points: [Checkpoint], setup: Machine.Setup, seed: UInt64, poolCapacity: Int? = nil) {
        let program = points.flatMap(\.code) + [hlt]
        var rng = SplitMix64(state: seed ^ 0xDA7A)
        let data = (0..<0x200).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
        let cached = Machine(setup, code: program), uncached = Machine(setup, code: program)
        if let poolCapacity {
            cached.cpu.decodedStorage = DecodedCacheStorage(poolCapacity: poolCapacity)
            cached.cpu.decoded = DecodedCache(cached.cpu.decodedStorage)
        }
        uncached.cpu.decodedCacheEnabled = false
        for m in [cached, uncached] { m.write(data, at: 0x2000) }
        for (index, point) in points.enumerated() {
            let exits = [cached.cpu.run(maxInstructions: 100_000), uncached.cpu.run(maxInstructions: 100_000)]
            #expect(exits[0] == exits[1], "exit at checkpoint \(index): \(point.label)")
            #expect((0..<16).map { cached.cpu.state.gpr[$0] } == (0..<16).map { uncached.cpu.state.gpr[$0] },
                    "GPRs after checkpoint \(index): \(point.label)")
            #expect(cached.cpu.state.rip == uncached.cpu.state.rip, "RIP after checkpoint \(index): \(point.label)")
            #expect(cached.cpu.state.rflags == uncached.cpu.state.rflags, "RFLAGS after checkpoint \(index): \(point.label)")
            let differs = (0x2000..<0x2200).contains { cached.load8(UInt64($0)) != uncached.load8(UInt64($0)) }
                || (0x7F00..<0x8000).contains { cached.load8(UInt64($0)) != uncached.load8(UInt64($0)) }
            #expect(!differs, "memory after checkpoint \(index): \(point.label)")
        }
    }
}

/// The host TLB (loads and stores through one compare) must fault, map and
/// log as the page walk does.
@Suite("X86 host TLB")
struct HostTLBTests {
    /// The long-mode set-up's PTE of `page`.
    static func pte(_ page: UInt64) -> UInt64 { Machine.pageTable + page * 8 }

    @Test func userAccessToASupervisorPageFaultsAfterTheKernelUsedIt() {
        // mov rax, [0x2000]; hlt
        let m = Machine(.long64, code: [0x48, 0x8B, 0x04, 0x25, 0x00, 0x20, 0x00, 0x00, hlt])
        m.store64(HostTLBTests.pte(2), 0x2000 | 3)  // present, writable, supervisor only
        #expect(m.run() == .halt)
        // The same load at CPL 3.
        m.cpu.state[.cs] = SegmentRegister(selector: 0x1B, base: 0, limit: 0xFFFF_FFFF, attributes: 0xA0FB)
        m.cpu.state[.ss] = SegmentRegister(selector: 0x23, base: 0, limit: 0xFFFF_FFFF, attributes: 0xC0F3)
        m.cpu.state.rip = 0x1000
        #expect(m.run() == .exception(vector: Vector.pf.rawValue, errorCode: 5))
        #expect(m.cpu.state.cr2 == 0x2000)
    }

    @Test func clacTakesUserPagesFromASupervisorWithSMAP() {
        // stac; mov eax, [0x2000]; clac; mov eax, [0x2000]; hlt — every page of the set-up is a user page.
        let m = Machine(.long64, code: [0x0F, 0x01, 0xCB, 0x8B, 0x04, 0x25, 0x00, 0x20, 0x00, 0x00,
                                        0x0F, 0x01, 0xCA, 0x8B, 0x04, 0x25, 0x00, 0x20, 0x00, 0x00, hlt])
        m.cpu.cpuid = [CPUIDLeaf(function: 0, eax: 7), CPUIDLeaf(function: 7, significantIndex: true, ebx: 1 << 20)]
        m.cpu.state.cr4 |= ControlBits.cr4SMAP
        #expect(m.run() == .exception(vector: Vector.pf.rawValue, errorCode: 1))
        #expect(m.cpu.state.rip == 0x100D)
    }

    @Test func storeAfterACR3SwitchUsesTheNewTables() {
        // A second hierarchy at 0x14000-0x17000 maps linear 0x2000 to 0x9000.
        let code: [UInt8] = [0xC6, 0x04, 0x25, 0x00, 0x20, 0x00, 0x00, 0x11,  // mov byte [0x2000], 0x11
                             0x0F, 0x22, 0xDB,                                // mov cr3, rbx
                             0xC6, 0x04, 0x25, 0x00, 0x20, 0x00, 0x00, 0x22,  // mov byte [0x2000], 0x22
                             hlt]
        let m = Machine(.long64, code: code)
        m.store64(0x14000, 0x15000 | 7)
        m.store64(0x15000, 0x16000 | 7)
        m.store64(0x16000, 0x17000 | 7)
        for page in UInt64(0)..<256 { m.store64(0x17000 + page * 8, (page == 2 ? 0x9000 : page << 12) | 7) }
        m[.rbx] = 0x14000
        #expect(m.run() == .halt)
        #expect(m.load8(0x2000) == 0x11)
        #expect(m.load8(0x9000) == 0x22)
    }

    @Test func storeAfterINVLPGUsesTheNewEntry() {
        let code: [UInt8] = [0xC6, 0x04, 0x25, 0x00, 0x20, 0x00, 0x00, 0x11,  // mov byte [0x2000], 0x11
                             0x48, 0x89, 0x04, 0x25] + le32(UInt32(HostTLBTests.pte(2)))  // mov [pte], rax
            + [0x0F, 0x01, 0x3C, 0x25, 0x00, 0x20, 0x00, 0x00,                // invlpg [0x2000]
               0xC6, 0x04, 0x25, 0x00, 0x20, 0x00, 0x00, 0x22,                // mov byte [0x2000], 0x22
               hlt]
        let m = Machine(.long64, code: code)
        m[.rax] = 0x9000 | 7
        #expect(m.run() == .halt)
        #expect(m.load8(0x2000) == 0x11)
        #expect(m.load8(0x9000) == 0x22)
    }

    @Test func everyStoreToALoggedRangeIsLogged() {
        let memory = UnsafeMutableRawPointer.allocate(byteCount: 0x10000, alignment: 4096)
        defer { memory.deallocate() }
        memory.initializeMemory(as: UInt8.self, repeating: 0, count: 0x10000)
        let bitmap = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)
        defer { bitmap.deallocate() }
        bitmap.pointee = 0
        // mov byte [0x2000], 1; hlt
        let code: [UInt8] = [0xC6, 0x06, 0x00, 0x20, 0x01, hlt]
        for (i, byte) in code.enumerated() { memory.storeBytes(of: byte, toByteOffset: 0x1000 + i, as: UInt8.self) }
        var state = CPUState()
        state[.cs] = .realMode(selector: 0, code: true)
        var cpu = X86CPU(memory: PhysicalMemory(ranges: [PhysicalRange(guestAddress: 0, size: 0x10000, host: memory,
                                                                       dirtyBitmap: bitmap)]), state: state)
        for _ in 0..<3 {
            bitmap.pointee = 0
            cpu.state.rip = 0x1000
            #expect(cpu.run(maxInstructions: 10) == .halt)
            #expect(bitmap.pointee == 1 << 2)
        }
    }

}

private func le32(_ v: UInt32) -> [UInt8] { (0..<4).map { UInt8(truncatingIfNeeded: v >> UInt32($0 * 8)) } }
