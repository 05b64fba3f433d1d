import Foundation
import GuestMemory
import KVM
import Testing
@testable import X86

/// A guest for system-level runs: memory, special registers, registers and
/// MSRs, run from the same start on the host's /dev/kvm and on the software
/// CPU, one exit at a time.
///
/// The 64-bit layout (`SystemGuest.long64`), after Linux's GDT:
/// 0x1000 CPL-0 code, PML4 0x2000 / PDPT 0x3000 / PD 0x4000 / PT 0x5000
/// identity-mapping 2 MiB with user, writable 4 KiB pages, GDT 0x6000
/// (0x08 code32, 0x10 code64, 0x18 data, 0x23 user code32, 0x2B user data,
/// 0x33 user code64, 0x40 TSS), IDT 0x7000, TSS 0x8000, kernel stack top
/// 0xA000 (RSP0), IST1 stack top 0xB000, user stack top 0xC000, user code
/// 0xC000, handlers 0xD000, data 0xE000.
struct SystemGuest {
    static let memorySize = 0x20000
    static let warmUpAddress = 0xF00

    var memory = [UInt8](repeating: 0, count: SystemGuest.memorySize)
    var special = SpecialRegisters()
    var registers = Registers()
    var msrs: [MSREntry] = []
    /// The guest's CPUID (KVM_SET_CPUID2 on the host, `X86CPU.cpuid` on the
    /// soft CPU); none by default, as a vCPU starts.
    var cpuid: [CPUIDEntry] = []

    mutating func write(_ bytes: [UInt8], at address: Int) {
        memory.replaceSubrange(address..<address + bytes.count, with: bytes)
    }

    mutating func store64(_ value: UInt64, at address: Int) {
        write((0..<8).map { UInt8(truncatingIfNeeded: value >> UInt64($0 * 8)) }, at: address)
    }

    mutating func store32(_ value: UInt32, at address: Int) {
        write((0..<4).map { UInt8(truncatingIfNeeded: value >> UInt32($0 * 8)) }, at: address)
    }

    static let kernelCode32: UInt16 = 0x08, kernelCode64: UInt16 = 0x10, kernelData: UInt16 = 0x18
    static let userCode32: UInt16 = 0x23, userData: UInt16 = 0x2B, userCode64: UInt16 = 0x33, tss: UInt16 = 0x40
    static let code = 0x1000, gdt = 0x6000, idt = 0x7000, tssAddress = 0x8000
    static let kernelStack: UInt64 = 0xA000, istStack: UInt64 = 0xB000, userStack: UInt64 = 0xC000
    static let userCode = 0xC000, handlers = 0xD000, data = 0xE000

    /// A code or data descriptor (flat unless given).
    static func descriptor(type: UInt8, dpl: UInt8, s: Bool = true, l: Bool = false, db: Bool = true,
                           base: UInt32 = 0, limit: UInt32 = 0xFFFFF, g: Bool = true, present: Bool = true) -> UInt64 {
        let access = UInt64(type) | (s ? 0x10 : 0) | UInt64(dpl) << 5 | (present ? 0x80 : 0)
        let flags: UInt64 = (l ? 2 : 0) | (db ? 4 : 0) | (g ? 8 : 0)
        return UInt64(limit & 0xFFFF) | UInt64(base & 0xFF_FFFF) << 16 | access << 40
            | UInt64(limit >> 16 & 0xF) << 48 | flags << 52 | UInt64(base >> 24) << 56
    }

    /// An interrupt or trap gate of the 64-bit IDT.
    mutating func gate64(_ vector: Int, handler: UInt64, type: UInt8 = 0xE, dpl: UInt8 = 0, ist: UInt8 = 0,
                         selector: UInt16 = SystemGuest.kernelCode64) {
        let low = (handler & 0xFFFF) | UInt64(selector) << 16 | UInt64(ist) << 32
            | UInt64(0x80 | dpl << 5 | type) << 40 | (handler >> 16 & 0xFFFF) << 48
        store64(low, at: SystemGuest.idt + vector * 16)
        store64(handler >> 32, at: SystemGuest.idt + vector * 16 + 8)
    }

    /// The 64-bit set-up described above, at CPL 0 about to run `code` at 0x1000.
    static func long64(code: [UInt8]) -> SystemGuest {
        var guest = SystemGuest()
        guest.store64(0x3000 | 7, at: 0x2000)
        guest.store64(0x4000 | 7, at: 0x3000)
        guest.store64(0x5000 | 7, at: 0x4000)
        for page in 0..<512 { guest.store64(UInt64(page) << 12 | 7, at: 0x5000 + page * 8) }
        let gdt: [UInt64] = [
            0,
            descriptor(type: 0xB, dpl: 0),                     // 0x08 code32
            descriptor(type: 0xB, dpl: 0, l: true, db: false),  // 0x10 code64
            descriptor(type: 0x3, dpl: 0),                     // 0x18 data
            descriptor(type: 0xB, dpl: 3),                     // 0x20 user code32
            descriptor(type: 0x3, dpl: 3),                     // 0x28 user data
            descriptor(type: 0xB, dpl: 3, l: true, db: false),  // 0x30 user code64
            0,
            descriptor(type: 0x9, dpl: 0, s: false, db: false, base: UInt32(tssAddress), limit: 0x67, g: false),  // 0x40 TSS
            0,
        ]
        for (i, d) in gdt.enumerated() { guest.store64(d, at: SystemGuest.gdt + i * 8) }
        guest.store64(kernelStack, at: tssAddress + 4)  // RSP0
        guest.store64(istStack, at: tssAddress + 0x24)  // IST1
        guest.write(code, at: SystemGuest.code)

        var s = SpecialRegisters()
        s.cr0 = 0x8000_0011
        s.cr3 = 0x2000
        s.cr4 = 0x20
        s.efer = 0x501
        s.cs = Segment(base: 0, limit: 0xFFFF_FFFF, selector: kernelCode64, type: 0xB, l: true, g: true)
        let data = Segment(base: 0, limit: 0xFFFF_FFFF, selector: kernelData, type: 0x3, db: true, g: true)
        (s.ds, s.es, s.fs, s.gs, s.ss) = (data, data, data, data, data)
        s.tr = Segment(base: UInt64(tssAddress), limit: 0x67, selector: tss, type: 0xB, s: false)
        s.ldt = Segment(base: 0, limit: 0xFFFF, selector: 0, type: 0x2, s: false)
        s.gdt = DescriptorTable(base: UInt64(SystemGuest.gdt), limit: UInt16(gdt.count * 8 - 1))
        s.idt = DescriptorTable(base: UInt64(idt), limit: 0xFFF)
        guest.special = s
        guest.registers.rip = UInt64(SystemGuest.code)
        guest.registers.rsp = kernelStack
        guest.registers.rflags = 2
        return guest
    }
}

/// One exit and the state after it.
struct SystemStep: Equatable, CustomStringConvertible {
    var exit: String
    var registers: Registers
    var special: SpecialRegisters

    var description: String {
        "\(exit) rip=\(hex(registers.rip)) rsp=\(hex(registers.rsp)) rflags=\(hex(registers.rflags)) cs=\(hex(special.cs.selector)) ss=\(hex(special.ss.selector))"
    }
}

func hex(_ value: some BinaryInteger) -> String { "0x" + String(value, radix: 16) }

extension SystemGuest {
    /// Runs on the host until `maxExits` exits or one that ends the run
    /// (anything but port I/O); an `in` reads 0.
    func runOnHost(maxExits: Int = 16) throws -> (steps: [SystemStep], memory: [UInt8]) {
        let vm = try Hypervisor(accelerator: .host).createVM()
        let region = try GuestMemoryRegion(size: SystemGuest.memorySize)
        try region.write(memory, at: 0)
        // Warm up in real mode through an `out` at 0xF00, since state set
        // before the first KVM_RUN can be lost on kvm_pvm.
        try region.write([0xE6, 0xF0], at: SystemGuest.warmUpAddress)
        try vm.setMemoryRegion(slot: 0, guestAddress: 0, region: region)
        let vcpu = try vm.createVCPU(id: 0)
        if !cpuid.isEmpty { try vcpu.setCPUID(cpuid) }
        var warm = try vcpu.specialRegisters()
        warm.cs.base = 0
        warm.cs.selector = 0
        try vcpu.setSpecialRegisters(warm)
        var start = Registers()
        start.rip = UInt64(SystemGuest.warmUpAddress)
        try vcpu.setRegisters(start)
        _ = try vcpu.run()
        try region.write(Array(memory[SystemGuest.warmUpAddress..<SystemGuest.warmUpAddress + 2]), at: SystemGuest.warmUpAddress)
        var special = self.special
        special.apicBase = warm.apicBase
        try vcpu.setSpecialRegisters(special)
        try vcpu.setRegisters(registers)
        if !msrs.isEmpty { try vcpu.setMSRs(msrs) }
        var steps: [SystemStep] = []
        for _ in 0..<maxExits {
            let exit = try vcpu.runWithDeadline()
            let step = SystemStep(exit: Self.describe(exit), registers: try vcpu.registers(), special: try vcpu.specialRegisters())
            steps.append(step)
            guard case .io(let io) = exit else { break }
            if io.direction == .in { try vcpu.setInput(0) }
        }
        return (steps, try region.read(at: 0, count: SystemGuest.memorySize))
    }

    /// Runs on the software CPU with the same rules; `inspect` sees the CPU
    /// at the end. The run is made again without the decoded cache, as
    /// `Machine.run()` does, and must give the same exits, registers and memory.
    func runOnSoftCPU(maxExits: Int = 16, sourceLocation: SourceLocation = #_sourceLocation,
                      inspect: (inout X86CPU) -> Void = { _ in }) -> (steps: [SystemStep], memory: [UInt8]) {
        let reference = runOnSoftCPU(maxExits: maxExits, decodedCache: false, inspect: { _ in })
        let cached = runOnSoftCPU(maxExits: maxExits, decodedCache: true, inspect: inspect)
        #expect(cached.steps.map(\.exit) == reference.steps.map(\.exit), "exits with the decoded cache and without",
                sourceLocation: sourceLocation)
        for (index, (got, want)) in zip(cached.steps, reference.steps).enumerated() {
            #expect(got.registers == want.registers, "registers after exit \(index) with the decoded cache and without",
                    sourceLocation: sourceLocation)
            #expect(got.special == want.special,
                    "special registers after exit \(index) without the decoded cache and with: \(Self.differences(want.special, got.special))",
                    sourceLocation: sourceLocation)
        }
        if let first = zip(cached.memory, reference.memory).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset {
            Issue.record("memory differs first at \(hex(first)) with the decoded cache and without", sourceLocation: sourceLocation)
        }
        return cached
    }

    private func runOnSoftCPU(maxExits: Int, decodedCache: Bool,
                              inspect: (inout X86CPU) -> Void) -> (steps: [SystemStep], memory: [UInt8]) {
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: SystemGuest.memorySize, alignment: 4096)
        defer { buffer.deallocate() }
        memory.withUnsafeBytes { buffer.copyMemory(from: $0.baseAddress!, byteCount: SystemGuest.memorySize) }
        var cpu = X86CPU(memory: PhysicalMemory(base: buffer, size: SystemGuest.memorySize))
        cpu.decodedCacheEnabled = decodedCache
        cpu.deliversExceptions = true
        cpu.cpuid = cpuid.map {
            CPUIDLeaf(function: $0.function, index: $0.index, significantIndex: $0.flags & 1 != 0,
                      eax: $0.eax, ebx: $0.ebx, ecx: $0.ecx, edx: $0.edx)
        }
        cpu.state.load(special, registers)
        for msr in msrs { _ = cpu.writeMSR(msr.index, msr.data, host: true) }
        var steps: [SystemStep] = []
        for _ in 0..<maxExits {
            let exit = cpu.run(maxInstructions: 1_000_000)
            steps.append(SystemStep(exit: Self.describe(exit), registers: cpu.state.registers, special: cpu.state.special))
            guard case .io(let io) = exit else { break }
            if cpu.hasStringInput {
                [UInt8](repeating: 0, count: io.count * io.size).withUnsafeBytes { cpu.completeStringInput($0) }
            } else if !io.isWrite {
                cpu.completeInput(0)
            }
        }
        inspect(&cpu)
        let bytes = [UInt8](UnsafeRawBufferPointer(start: buffer, count: SystemGuest.memorySize))
        return (steps, bytes)
    }

    static func describe(_ exit: VCPUExit) -> String {
        switch exit {
        case .io(let io): return "io \(io.direction == .in ? "in" : "out") \(hex(io.port)) size \(io.size) value \(hex(io.value))"
        case .mmio(let access): return "mmio \(access.isWrite ? "write" : "read") \(hex(access.address)) size \(access.length)"
        case .halt: return "halt"
        case .shutdown: return "shutdown"
        case .internalError: return "internal error"
        default: return "\(exit)"
        }
    }

    static func describe(_ exit: X86Exit) -> String {
        switch exit {
        case .io(let io): return "io \(io.isWrite ? "out" : "in") \(hex(io.port)) size \(io.size) value \(hex(io.isWrite ? io.data : 0))"
        case .mmio(let access): return "mmio \(access.isWrite ? "write" : "read") \(hex(access.address)) size \(access.size)"
        case .halt: return "halt"
        case .shutdown: return "shutdown"
        case .emulationFailure: return "internal error"
        default: return "\(exit)"
        }
    }

    /// Runs on both and expects the same exits, registers, special
    /// registers and memory. Returns the software CPU's steps.
    @discardableResult
    func expectSameOnHostAndSoftCPU(maxExits: Int = 16, ignoringMemory: [Range<Int>] = [], ignoringFlags: UInt64 = 0,
                                    sourceLocation: SourceLocation = #_sourceLocation) throws -> [SystemStep] {
        let host = try runOnHost(maxExits: maxExits)
        let soft = runOnSoftCPU(maxExits: maxExits)
        #expect(soft.steps.count == host.steps.count, "host: \(host.steps)\nsoft: \(soft.steps)", sourceLocation: sourceLocation)
        for (index, (want, got)) in zip(host.steps, soft.steps).enumerated() {
            #expect(got.exit == want.exit, "exit \(index): host \(want) soft \(got)", sourceLocation: sourceLocation)
            var wantRegisters = want.registers, gotRegisters = got.registers
            // kvm_pvm reads IOPL back as 0.
            wantRegisters.rflags &= ~(RFLAGS.iopl | ignoringFlags)
            gotRegisters.rflags &= ~(RFLAGS.iopl | ignoringFlags)
            #expect(gotRegisters == wantRegisters, "registers after exit \(index) (\(want.exit))", sourceLocation: sourceLocation)
            let differences = Self.differences(Self.comparable(want.special), Self.comparable(got.special))
            #expect(differences.isEmpty, "special registers after exit \(index) (\(want.exit)): \(differences)",
                    sourceLocation: sourceLocation)
        }
        var hostMemory = host.memory, softMemory = soft.memory
        for range in ignoringMemory {
            hostMemory.replaceSubrange(range, with: repeatElement(0, count: range.count))
            softMemory.replaceSubrange(range, with: repeatElement(0, count: range.count))
        }
        if let first = zip(hostMemory, softMemory).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset {
            Issue.record("memory differs first at \(hex(first)): host \(hex(hostMemory[first])) soft \(hex(softMemory[first]))",
                         sourceLocation: sourceLocation)
        }
        return soft.steps
    }

    /// The fields that differ, named, with the host's and the soft CPU's values.
    static func differences(_ want: SpecialRegisters, _ got: SpecialRegisters) -> [String] {
        var out: [String] = []
        let segments: [(String, KeyPath<SpecialRegisters, Segment>)] = [
            ("cs", \.cs), ("ds", \.ds), ("es", \.es), ("fs", \.fs), ("gs", \.gs), ("ss", \.ss), ("tr", \.tr), ("ldt", \.ldt),
        ]
        for (name, path) in segments where want[keyPath: path] != got[keyPath: path] {
            out.append("\(name): host \(want[keyPath: path]) soft \(got[keyPath: path])")
        }
        let values: [(String, KeyPath<SpecialRegisters, UInt64>)] = [
            ("cr0", \.cr0), ("cr2", \.cr2), ("cr3", \.cr3), ("cr4", \.cr4), ("efer", \.efer),
        ]
        for (name, path) in values where want[keyPath: path] != got[keyPath: path] {
            out.append("\(name): host \(hex(want[keyPath: path])) soft \(hex(got[keyPath: path]))")
        }
        if want.gdt != got.gdt || want.idt != got.idt { out.append("gdt/idt: host \(want.gdt) \(want.idt) soft \(got.gdt) \(got.idt)") }
        return out
    }

    /// What both backends must agree on: an unusable segment's cached
    /// fields are the vendor's (VMX and SVM keep different ones).
    static func comparable(_ s: SpecialRegisters) -> SpecialRegisters {
        var s = s
        func clean(_ segment: inout Segment) {
            if segment.unusable || !segment.present {
                segment = Segment(base: 0, limit: 0, selector: segment.selector, type: 0, present: false, unusable: true)
            }
        }
        clean(&s.cs); clean(&s.ds); clean(&s.es); clean(&s.fs); clean(&s.gs); clean(&s.ss); clean(&s.ldt)
        s.apicBase = 0
        s.interruptBitmap = [0, 0, 0, 0]
        s.cr8 = 0
        return s
    }
}

extension Segment {
    init(_ segment: SegmentRegister) {
        let a = segment.attributes
        self.init(base: segment.base, limit: segment.limit, selector: segment.selector, type: UInt8(a & 0xF),
                  present: a & 0x80 != 0, dpl: UInt8((a >> 5) & 3), db: a & 0x4000 != 0, s: a & 0x10 != 0,
                  l: a & 0x2000 != 0, g: a & 0x8000 != 0, avl: a & 0x1000 != 0, unusable: a & 0x80 == 0)
    }
}

extension SegmentRegister {
    init(_ segment: Segment) {
        var attributes = UInt16(segment.type & 0xF) | (segment.s ? 0x10 : 0) | UInt16(segment.dpl & 3) << 5
            | (segment.present ? 0x80 : 0) | (segment.avl ? 0x1000 : 0) | (segment.l ? 0x2000 : 0)
            | (segment.db ? 0x4000 : 0) | (segment.g ? 0x8000 : 0)
        if segment.unusable { attributes = 0 }
        self.init(selector: segment.selector, base: segment.base, limit: segment.limit, attributes: attributes)
    }
}

extension CPUState {
    /// The state KVM_SET_SREGS and KVM_SET_REGS give, as SoftKVM loads it.
    mutating func load(_ s: SpecialRegisters, _ r: Registers) {
        cr0 = s.cr0; cr2 = s.cr2; cr3 = s.cr3; cr4 = s.cr4; efer = s.efer
        cs = SegmentRegister(s.cs); ds = SegmentRegister(s.ds); es = SegmentRegister(s.es)
        fs = SegmentRegister(s.fs); gs = SegmentRegister(s.gs); ss = SegmentRegister(s.ss)
        tr = SegmentRegister(s.tr); ldtr = SegmentRegister(s.ldt)
        gdtr = DescriptorTableRegister(base: s.gdt.base, limit: s.gdt.limit)
        idtr = DescriptorTableRegister(base: s.idt.base, limit: s.idt.limit)
        let values = [r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15]
        for (i, v) in values.enumerated() { gpr[i] = v }
        rip = r.rip
        rflags = r.rflags
    }

    var registers: Registers {
        var r = Registers()
        (r.rax, r.rcx, r.rdx, r.rbx) = (gpr[0], gpr[1], gpr[2], gpr[3])
        (r.rsp, r.rbp, r.rsi, r.rdi) = (gpr[4], gpr[5], gpr[6], gpr[7])
        (r.r8, r.r9, r.r10, r.r11) = (gpr[8], gpr[9], gpr[10], gpr[11])
        (r.r12, r.r13, r.r14, r.r15) = (gpr[12], gpr[13], gpr[14], gpr[15])
        r.rip = rip
        r.rflags = rflags
        return r
    }

    var special: SpecialRegisters {
        var s = SpecialRegisters()
        s.cs = Segment(cs); s.ds = Segment(ds); s.es = Segment(es); s.fs = Segment(fs); s.gs = Segment(gs); s.ss = Segment(ss)
        s.tr = Segment(tr); s.ldt = Segment(ldtr)
        s.gdt = DescriptorTable(base: gdtr.base, limit: gdtr.limit)
        s.idt = DescriptorTable(base: idtr.base, limit: idtr.limit)
        s.cr0 = cr0; s.cr2 = cr2; s.cr3 = cr3; s.cr4 = cr4; s.efer = efer
        return s
    }
}

extension SystemGuest {
    /// 32-bit protected mode without paging: GDT at 0x6000 with 0x08 code
    /// DPL 0, 0x10 data DPL 0, 0x1B code DPL 3, 0x23 data DPL 3, 0x28 a
    /// 32-bit TSS at 0x8000 (SS0:ESP0 = 0x10:0xA000), 0x30 a 32-bit call
    /// gate of DPL 3 to 0x08:0xD500 copying two parameters, 0x38 an LDT at
    /// 0x6800 (three entries), 0x40 data with base 0xE000 and limit 0xFF,
    /// 0x48 expand-down data above 0x7FFF, 0x50 read-only data, 0x58 a
    /// conforming code segment; 8-byte gates in the IDT at 0x7000.
    static let callGate: UInt16 = 0x30, ldt: UInt16 = 0x38, smallData: UInt16 = 0x40
    static let expandDown: UInt16 = 0x48, readOnly: UInt16 = 0x50, conforming: UInt16 = 0x58, tss32: UInt16 = 0x28

    static func protected32(code: [UInt8]) -> SystemGuest {
        var guest = SystemGuest()
        let gate: UInt64 = UInt64(handlers + 0x500) & 0xFFFF | UInt64(0x08) << 16 | 2 << 32 | UInt64(0xEC) << 40
            | (UInt64(handlers + 0x500) >> 16) << 48
        let gdt: [UInt64] = [
            0,
            descriptor(type: 0xB, dpl: 0), descriptor(type: 0x3, dpl: 0),
            descriptor(type: 0xB, dpl: 3), descriptor(type: 0x3, dpl: 3),
            descriptor(type: 0x9, dpl: 0, s: false, db: false, base: UInt32(tssAddress), limit: 0x67, g: false),
            gate,
            descriptor(type: 0x2, dpl: 0, s: false, db: false, base: 0x6800, limit: 0x17, g: false),
            descriptor(type: 0x3, dpl: 0, base: 0xE000, limit: 0xFF, g: false),
            descriptor(type: 0x7, dpl: 0, base: 0, limit: 0x7FFF, g: false),
            descriptor(type: 0x1, dpl: 0),
            descriptor(type: 0xF, dpl: 0),
        ]
        for (i, d) in gdt.enumerated() { guest.store64(d, at: SystemGuest.gdt + i * 8) }
        guest.store32(UInt32(kernelStack), at: tssAddress + 4)
        guest.store32(0x10, at: tssAddress + 8)
        guest.write(code, at: SystemGuest.code)
        var s = SpecialRegisters()
        s.cr0 = 0x11
        s.cs = Segment(base: 0, limit: 0xFFFF_FFFF, selector: 0x08, type: 0xB, db: true, g: true)
        let data = Segment(base: 0, limit: 0xFFFF_FFFF, selector: 0x10, type: 0x3, db: true, g: true)
        (s.ds, s.es, s.fs, s.gs, s.ss) = (data, data, data, data, data)
        s.tr = Segment(base: UInt64(tssAddress), limit: 0x67, selector: tss32, type: 0xB, s: false)
        s.ldt = Segment(base: 0, limit: 0xFFFF, selector: 0, type: 0x2, s: false)
        s.gdt = DescriptorTable(base: UInt64(SystemGuest.gdt), limit: UInt16(gdt.count * 8 - 1))
        s.idt = DescriptorTable(base: UInt64(idt), limit: 0x7FF)
        guest.special = s
        guest.registers.rip = UInt64(SystemGuest.code)
        guest.registers.rsp = kernelStack
        guest.registers.rflags = 2
        return guest
    }

    /// A 32-bit interrupt (0xE) or trap (0xF) gate to CS 0x08.
    mutating func gate32(_ vector: Int, handler: UInt32, type: UInt8 = 0xE, dpl: UInt8 = 0) {
        let low = UInt64(handler & 0xFFFF) | UInt64(0x08) << 16 | UInt64(0x80 | dpl << 5 | type) << 40
            | UInt64(handler >> 16) << 48
        store64(low, at: SystemGuest.idt + vector * 8)
    }
}
