import CLinuxKVM
import Foundation
import GuestMemory
import Testing
@testable import KVM
@testable import SoftKVM

/// One exit of a run and the vCPU state right after it.
struct RunStep: Equatable, CustomStringConvertible {
    var exit: VCPUExit
    var registers: Registers
    var special: SpecialRegisters

    var description: String { "\(exit) rip=0x\(String(registers.rip, radix: 16)) rsp=0x\(String(registers.rsp, radix: 16))" }
}

/// A guest's run as a list of steps, and guest memory at the end.
struct RunTrace: Equatable {
    var steps: [RunStep]
    var memory: [UInt8]
}

/// Runs `code` (at 0x1000, real mode unless `setup` changes it) until it
/// halts, shuts down, fails or gives `maxExits` exits; reads are answered
/// with 0x5A bytes.
func trace(_ backend: Backend, code: [UInt8], maxExits: Int = 16,
           setup: (RealModeGuest) throws -> Void = { _ in }) throws -> RunTrace {
    let guest = try RealModeGuest(hypervisor: backend.hypervisor(), code: code)
    try setup(guest)
    var steps: [RunStep] = []
    for _ in 0..<maxExits {
        let exit = try guest.vcpu.runWithDeadline()
        steps.append(RunStep(exit: exit, registers: try guest.vcpu.registers(), special: try guest.vcpu.specialRegisters()))
        switch exit {
        case .io(let io) where io.direction == .in:
            try guest.vcpu.setInput(repeatElement(0x5A, count: io.length))
        case .mmio(let access) where !access.isWrite:
            try guest.vcpu.setInput(repeatElement(0x5A, count: Int(access.length)))
        case .io, .mmio:
            continue
        default:
            return RunTrace(steps: steps, memory: try guest.memory.read(at: 0, count: RealModeGuest.memorySize))
        }
    }
    return RunTrace(steps: steps, memory: try guest.memory.read(at: 0, count: RealModeGuest.memorySize))
}

/// The same guest on the host and on SoftKVM: the same exits, registers,
/// special registers and memory.
func expectSameTrace(code: [UInt8], maxExits: Int = 16, setup: (RealModeGuest) throws -> Void = { _ in },
                     sourceLocation: SourceLocation = #_sourceLocation) throws -> RunTrace {
    let host = try trace(.host, code: code, maxExits: maxExits, setup: setup)
    let soft = try trace(.soft, code: code, maxExits: maxExits, setup: setup)
    #expect(soft.steps.count == host.steps.count, "host: \(host.steps), soft: \(soft.steps)", sourceLocation: sourceLocation)
    for (index, (want, got)) in zip(host.steps, soft.steps).enumerated() {
        if case .internalError(let wantError) = want.exit, case .internalError(let gotError) = got.exit {
            // The words after the flags are the vendor's exit information (VMX, SVM or PVM).
            #expect(gotError.suberror == wantError.suberror && gotError.data.count == wantError.data.count
                    && gotError.data.first == wantError.data.first, "exit \(index): \(got.exit) vs \(want.exit)",
                    sourceLocation: sourceLocation)
        } else {
            #expect(got.exit == want.exit, "exit \(index)", sourceLocation: sourceLocation)
        }
        #expect(got.registers == want.registers, "registers after exit \(index)", sourceLocation: sourceLocation)
        #expect(got.special == want.special, "special registers after exit \(index)", sourceLocation: sourceLocation)
    }
    if soft.memory != host.memory {
        let first = zip(host.memory, soft.memory).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? 0
        Issue.record("guest memory differs first at 0x\(String(first, radix: 16))", sourceLocation: sourceLocation)
    }
    return soft
}

/// A flat 32-bit protected-mode setup: GDT at 0x500 (null, code 0x08,
/// data 0x10), IDT at 0x600 with `gates` (vector, handler, type), stack at 0x8000.
func enterProtectedMode(_ guest: RealModeGuest, gates: [(vector: Int, handler: UInt32, type: UInt8)], idtLimit: UInt16? = nil) throws {
    let gdt: [UInt64] = [0, 0x00CF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF]
    for (i, descriptor) in gdt.enumerated() { try guest.memory.store(descriptor, at: 0x500 + i * 8) }
    var highest = 0
    for gate in gates {
        let low = UInt64(gate.handler & 0xFFFF) | UInt64(8) << 16 | UInt64(gate.type) << 40
            | UInt64(gate.handler >> 16) << 48
        try guest.memory.store(low, at: 0x600 + gate.vector * 8)
        highest = max(highest, gate.vector)
    }
    var sregs = try guest.vcpu.handle.get(.getSregs, kvm_sregs.self)
    sregs.cr0 |= 1
    sregs.cs = kvm_segment(base: 0, limit: 0xFFFF_FFFF, selector: 8, type: 0xB, present: 1, dpl: 0, db: 1, s: 1, l: 0, g: 1, avl: 0, unusable: 0, padding: 0)
    let data = kvm_segment(base: 0, limit: 0xFFFF_FFFF, selector: 0x10, type: 0x3, present: 1, dpl: 0, db: 1, s: 1, l: 0, g: 1, avl: 0, unusable: 0, padding: 0)
    (sregs.ds, sregs.es, sregs.ss, sregs.fs, sregs.gs) = (data, data, data, data, data)
    sregs.gdt = kvm_dtable(base: 0x500, limit: 0x17, padding: (0, 0, 0))
    sregs.idt = kvm_dtable(base: 0x600, limit: idtLimit ?? UInt16(highest * 8 + 7), padding: (0, 0, 0))
    try guest.vcpu.handle.call(.setSregs, &sregs)
}

/// Long mode with paging: page tables at 0x2000 identity-mapping the first
/// 2 MiB with one large page, GDT at 0x500 (null, 64-bit code 0x08, data
/// 0x10), a 64-bit IDT at 0x600 with `gates` (vector, handler).
func enterLongMode(_ guest: RealModeGuest, gates: [(vector: Int, handler: UInt64)]) throws {
    try guest.memory.store(UInt64(0x3000 | 3), at: 0x2000)
    try guest.memory.store(UInt64(0x4000 | 3), at: 0x3000)
    try guest.memory.store(UInt64(0x83), at: 0x4000)
    let gdt: [UInt64] = [0, 0x00AF_9B00_0000_FFFF, 0x00CF_9300_0000_FFFF]
    for (i, descriptor) in gdt.enumerated() { try guest.memory.store(descriptor, at: 0x500 + i * 8) }
    for gate in gates {
        let low = (gate.handler & 0xFFFF) | UInt64(8) << 16 | UInt64(0x8E) << 40 | (gate.handler >> 16 & 0xFFFF) << 48
        try guest.memory.store(low, at: 0x600 + gate.vector * 16)
        try guest.memory.store(gate.handler >> 32, at: 0x608 + gate.vector * 16)
    }
    var sregs = try guest.vcpu.handle.get(.getSregs, kvm_sregs.self)
    sregs.cr0 = 0x8000_0011
    sregs.cr3 = 0x2000
    sregs.cr4 = 0x20
    sregs.efer = 0x500
    sregs.cs = kvm_segment(base: 0, limit: 0xFFFF_FFFF, selector: 8, type: 0xB, present: 1, dpl: 0, db: 0, s: 1, l: 1, g: 1, avl: 0, unusable: 0, padding: 0)
    let data = kvm_segment(base: 0, limit: 0xFFFF_FFFF, selector: 0x10, type: 0x3, present: 1, dpl: 0, db: 1, s: 1, l: 0, g: 1, avl: 0, unusable: 0, padding: 0)
    (sregs.ds, sregs.es, sregs.ss, sregs.fs, sregs.gs) = (data, data, data, data, data)
    sregs.gdt = kvm_dtable(base: 0x500, limit: 0x17, padding: (0, 0, 0))
    sregs.idt = kvm_dtable(base: 0x600, limit: 0xFFF, padding: (0, 0, 0))
    try guest.vcpu.handle.call(.setSregs, &sregs)
}

@Suite("Guest runs compared with the host's /dev/kvm", .enabled(if: HostKVM.isAvailable))
struct RunDifferentialTests {
    @Test func realModeFaultGoesThroughTheIVT() throws {
        let run = try expectSameTrace(code: [
            0xB8, 0x34, 0x12,  // mov ax, 0x1234
            0x0F, 0x0B,        // ud2
        ]) { guest in
            try guest.memory.store(UInt32(0x0000_2000), at: 6 * 4)  // IVT[6] = 0000:2000
            try guest.memory.write([0xE6, 0x30, 0xF4], at: 0x2000)  // out 0x30, al; hlt
        }
        #expect(run.steps.first?.exit == .io(PortIO(direction: .out, port: 0x30, size: 1, value: 0x34)))
    }

    @Test func realModeSoftwareInterruptReturnsWithIRET() throws {
        _ = try expectSameTrace(code: [
            0xCD, 0x21,  // int 0x21
            0xE6, 0x31,  // out 0x31, al
            0xF4,        // hlt
        ]) { guest in
            try guest.memory.store(UInt32(0x0000_2000), at: 0x21 * 4)
            try guest.memory.write([0xB0, 0x55, 0xCF], at: 0x2000)  // mov al, 0x55; iret
        }
    }

    @Test func unknownMSRIsGeneralProtectionWithItsErrorCode() throws {
        let run = try expectSameTrace(code: [
            0xB9, 0x78, 0x56, 0x34, 0x12,  // mov ecx, 0x12345678
            0x0F, 0x30,                    // wrmsr
            0xF4,
        ]) { guest in
            try enterProtectedMode(guest, gates: [(13, 0x3000, 0x8E)])
            try guest.memory.write([0x58, 0xE7, 0x30, 0xF4], at: 0x3000)  // pop eax; out 0x30, eax; hlt
        }
        #expect(run.steps.first?.exit == .io(PortIO(direction: .out, port: 0x30, size: 4, value: 0)))
    }

    @Test func selectorBeyondTheGDTIsGeneralProtectionNamingIt() throws {
        let run = try expectSameTrace(code: [
            0x66, 0xB8, 0x18, 0x00,  // mov ax, 0x18
            0x8E, 0xD8,              // mov ds, ax
            0xF4,
        ]) { guest in
            try enterProtectedMode(guest, gates: [(13, 0x3000, 0x8F)])
            try guest.memory.write([0x58, 0xE7, 0x30, 0xF4], at: 0x3000)
        }
        #expect(run.steps.first?.exit == .io(PortIO(direction: .out, port: 0x30, size: 4, value: 0x18)))
    }

    /// #GP whose gate is beyond the IDT limit: a double fault.
    @Test func faultDeliveringAFaultIsADoubleFault() throws {
        let run = try expectSameTrace(code: [
            0x66, 0xB8, 0x18, 0x00,  // mov ax, 0x18
            0x8E, 0xD8,              // mov ds, ax: #GP, whose gate is missing
        ]) { guest in
            try enterProtectedMode(guest, gates: [(8, 0x3000, 0x8E)], idtLimit: 8 * 8 + 7)
            try guest.memory.write([0x58, 0xE7, 0x30, 0xF4], at: 0x3000)
        }
        #expect(run.steps.first?.exit == .io(PortIO(direction: .out, port: 0x30, size: 4, value: 0)))
    }

    @Test func cpuidAnswersFromTheVCPUsTable() throws {
        let table = [
            CPUIDEntry(function: 0, eax: 2, ebx: 0x1111, ecx: 0x2222, edx: 0x3333),
            CPUIDEntry(function: 1, eax: 0x663, ebx: 0x0001_0800, ecx: 0, edx: 0),
            CPUIDEntry(function: 2, eax: 0x44, ebx: 0x55, ecx: 0x66, edx: 0x77),
            CPUIDEntry(function: 0x8000_0000, eax: 0x8000_0001),
            CPUIDEntry(function: 0x8000_0001, edx: 1 << 29),
        ]
        // Not leaf 1: this host's kvm_pvm answers it with features of its own.
        for leaf: UInt32 in [0, 2, 3, 5, 0x8000_0001, 0x8000_0002, 0x4000_0000] {
            let run = try expectSameTrace(code: [
                0x66, 0xB8] + withUnsafeBytes(of: leaf.littleEndian, Array.init) + [  // mov eax, leaf
                0x0F, 0xA2,  // cpuid
                0xF4,
            ]) { guest in
                try guest.vcpu.setCPUID(table)
            }
            #expect(run.steps.last?.exit == .halt, "leaf 0x\(String(leaf, radix: 16))")
        }
    }

    @Test func inputsAreAnsweredIntoTheRightRegistersAndMemory() throws {
        _ = try expectSameTrace(code: [
            0xE4, 0x40,                    // in al, 0x40
            0xBA, 0x60, 0x00,              // mov dx, 0x60
            0xED,                          // in ax, dx
            0x66, 0xED,                    // in eax, dx
            0xBF, 0xF8, 0x2F,              // mov di, 0x2ff8
            0xB9, 0x10, 0x00,              // mov cx, 16
            0xFC,                          // cld
            0xF3, 0x6C,                    // rep insb: 8 bytes to the page end, then 8 more
            0xB8, 0x00, 0x20,              // mov ax, 0x2000
            0x8E, 0xD8,                    // mov ds, ax
            0x8B, 0x1E, 0x04, 0x00,        // mov bx, [0x4]: MMIO
            0x66, 0x8B, 0x0E, 0x08, 0x00,  // mov ecx, [0x8]: MMIO
            0xBE, 0x00, 0x00,              // mov si, 0
            0xB9, 0x02, 0x00,              // mov cx, 2
            0xF3, 0x6F,                    // rep outsw from ds:0, which is MMIO
            0xF4,
        ])
    }

    /// A read of an unmapped page in long mode: #PF through a 64-bit gate,
    /// with CR2, the error code and a 16-byte aligned five-word frame.
    @Test func longModePageFaultGoesThroughThe64BitIDT() throws {
        let run = try expectSameTrace(code: [
            0x48, 0xC7, 0xC4, 0xF8, 0x7F, 0x00, 0x00,  // mov rsp, 0x7ff8: the frame is aligned down to 16
            0x48, 0x8B, 0x04, 0x25, 0x00, 0x00, 0x20, 0x00,  // mov rax, [0x200000]: not mapped
        ]) { guest in
            try enterLongMode(guest, gates: [(14, 0x5000)])
            try guest.memory.write([
                0x58,                    // pop rax: the error code
                0xE7, 0x30,              // out 0x30, eax
                0x0F, 0x20, 0xD0,        // mov rax, cr2
                0xE7, 0x31,              // out 0x31, eax
                0x58, 0xE7, 0x32,        // pop rax (RIP); out 0x32, eax
                0x58, 0xE7, 0x33,        // pop rax (CS); out 0x33, eax
                0x58, 0xE7, 0x34,        // pop rax (RFLAGS); out 0x34, eax
                0x58, 0xE7, 0x35,        // pop rax (RSP); out 0x35, eax
                0xF4,
            ], at: 0x5000)
        }
        #expect(run.steps.map(\.exit).prefix(2) == [
            .io(PortIO(direction: .out, port: 0x30, size: 4, value: 0)),
            .io(PortIO(direction: .out, port: 0x31, size: 4, value: 0x20_0000)),
        ])
    }

    @Test func fetchOutsideMemoryIsAnInternalError() throws {
        _ = try expectSameTrace(code: [
            0xEA, 0x00, 0x00, 0x00, 0x20,  // jmp 0x2000:0000, past the 64 KiB of RAM
        ])
    }

    @Test func bitTestsSetCarry() throws {
        _ = try expectSameTrace(code: [
            0x66, 0xB8, 0x05, 0x00, 0x00, 0x80,  // mov eax, 0x80000005
            0x66, 0x0F, 0xBA, 0xE0, 0x1F,        // bt eax, 31
            0x66, 0x0F, 0xBA, 0xE8, 0x01,        // bts eax, 1
            0x66, 0x0F, 0xBA, 0xF0, 0x00,        // btr eax, 0
            0x66, 0x0F, 0xBA, 0xF8, 0x02,        // btc eax, 2
            0xBB, 0x03, 0x00,                    // mov bx, 3
            0x0F, 0xA3, 0x1E, 0x00, 0x30,        // bt [0x3000], bx
            0x0F, 0xAB, 0x1E, 0x00, 0x30,        // bts [0x3000], bx
            0x9C,                                // pushf
            0xF4,
        ])
    }

    @Test func controlRegistersAndEFERReadBack() throws {
        _ = try expectSameTrace(code: [
            0x0F, 0x20, 0xC0,                    // mov eax, cr0
            0x0F, 0x20, 0xE3,                    // mov ebx, cr4
            0x66, 0xB9, 0x80, 0x00, 0x00, 0xC0,  // mov ecx, 0xc0000080
            0x0F, 0x32,                          // rdmsr
            0x66, 0x0D, 0x00, 0x01, 0x00, 0x00,  // or eax, 0x100
            0x0F, 0x30,                          // wrmsr
            0x0F, 0x32,                          // rdmsr
            0x66, 0x89, 0xC6,                    // mov esi, eax
            0x0F, 0x01, 0x06, 0x00, 0x30,        // sgdt [0x3000]
            0xF4,
        ]) { guest in
            try guest.vcpu.setCPUID([
                CPUIDEntry(function: 0x8000_0000, eax: 0x8000_0001), CPUIDEntry(function: 0x8000_0001, edx: 1 << 29),
            ])
        }
    }
}

/// Delivery rules where this host's kvm_pvm is not the oracle: it ends in a
/// triple fault where the SDM delivers a second exception.
@Suite("Exception delivery on SoftKVM")
struct SoftDeliveryTests {
    /// #UD's gate is not present: #NP for it (error code: IDT entry 6, EXT),
    /// delivered in turn because #UD is benign (SDM table 6-5).
    @Test func missingGateIsSegmentNotPresent() throws {
        let run = try trace(.soft, code: [0x0F, 0x0B]) { guest in
            try enterProtectedMode(guest, gates: [(6, 0x3000, 0x0E), (11, 0x3000, 0x8E)])
            try guest.memory.write([0x58, 0xE7, 0x30, 0xF4], at: 0x3000)
        }
        #expect(run.steps.first?.exit == .io(PortIO(direction: .out, port: 0x30, size: 4, value: 6 << 3 | 2 | 1)))
        #expect(run.steps.last?.exit == .halt)
    }

    @Test func tripleFaultLeavesRFSet() throws {
        let run = try trace(.soft, code: [0x0F, 0x0B]) { guest in
            try enterProtectedMode(guest, gates: [], idtLimit: 0)
        }
        #expect(run.steps.map(\.exit) == [.shutdown])
        #expect(run.steps.first?.registers.rflags == 0x10002)
        #expect(run.steps.first?.registers.rip == RealModeGuest.codeAddress)
    }
}

@Suite("vCPU rules around KVM_RUN on both backends")
struct RunRuleTests {
    @Test(arguments: Backend.available)
    func cpuidCanOnlyBeSetUnchangedAfterTheFirstRun(_ backend: Backend) throws {
        let guest = try RealModeGuest(hypervisor: backend.hypervisor(), code: [0xE6, 0x10, 0xF4])  // out 0x10, al; hlt
        let table = [CPUIDEntry(function: 0, eax: 1), CPUIDEntry(function: 1, eax: 0x663)]
        try guest.vcpu.setCPUID(table)
        #expect(try guest.vcpu.run() == .io(PortIO(direction: .out, port: 0x10, size: 1, value: 0)))
        // The table as the vCPU holds it (this host's kvm_pvm adds leaves of its own).
        try guest.vcpu.setCPUID(guest.vcpu.cpuid())
        let error = try #require(throws: KVMError.self) { try guest.vcpu.setCPUID(Array(table.prefix(1))) }
        #expect(error.errno == .invalidArgument)
    }
}

@Suite("Dirty logging while the guest runs")
struct ConcurrentDirtyLogTests {
    /// The guest writes pages 2 to 15 one at a time while this thread reads
    /// the log again and again: every page shows up in some read, once logging
    /// takes each word atomically.
    @Test(arguments: Backend.available)
    func noWrittenPageIsLost(_ backend: Backend) throws {
        var code: [UInt8] = []
        for page in 2...15 {
            code += [0xC6, 0x06, 0x00, UInt8(page << 4), 0x01]  // mov byte [page * 0x1000], 1
            code += [0xB9, 0x00, 0x10, 0xE2, 0xFE]              // mov cx, 0x1000; loop $
        }
        code += [0xF4]
        let guest = try RealModeGuest(hypervisor: backend.hypervisor(), code: code)
        try guest.vm.setMemoryRegion(slot: 0, guestAddress: 0, region: guest.memory, flags: .logDirtyPages)
        let vcpu = guest.vcpu
        let finished = DispatchSemaphore(value: 0)
        nonisolated(unsafe) var exit: Result<VCPUExit, Error>?
        let thread = Thread {
            exit = Result { try vcpu.runWithDeadline(seconds: 20) }
            finished.signal()
        }
        thread.start()
        var seen = Set<Int>()
        func collect() throws {
            let log = try guest.vm.dirtyLog(slot: 0)
            for page in 0..<log.pageCount where log.isDirty(page: page) { seen.insert(page) }
        }
        while finished.wait(timeout: .now() + .microseconds(200)) == .timedOut { try collect() }
        try collect()
        #expect(try exit?.get() == .halt)
        #expect(seen.isSuperset(of: Set(2...15)), "missing: \(Set(2...15).subtracting(seen).sorted())")
        #expect(seen.subtracting(Set(2...15)).subtracting([8]).isEmpty, "only the pages written, and the stack page")
    }
}

/// Not compared with this host: its kvm_pvm runs the guest past STI without
/// ever opening the requested interrupt window.
@Suite("User-space interrupt injection on SoftKVM")
struct InterruptInjectionTests {
    /// The window opens once STI has set IF and the instruction in its
    /// shadow has run, as VMX's interrupt-window exiting does (the host's
    /// kvm_pvm here opens it only at the next exit, so it is no oracle);
    /// KVM_INTERRUPT then delivers the vector through the IVT at the next
    /// KVM_RUN, and IRET returns.
    @Test func interruptWindowThenInjection() throws {
        let guest = try RealModeGuest(hypervisor: Backend.soft.hypervisor(), code: [
            0x90,        // nop
            0xFB,        // sti
            0x90,        // nop
            0xE6, 0x10,  // out 0x10, al
            0xF4,        // hlt
        ])
        try guest.memory.store(UInt32(0x0000_2000), at: 0x20 * 4)
        try guest.memory.write([0xB0, 0x77, 0xE6, 0x30, 0xCF], at: 0x2000)  // mov al, 0x77; out 0x30, al; iret
        guest.vcpu.requestInterruptWindow = true
        #expect(try guest.vcpu.runWithDeadline() == .irqWindowOpen)
        #expect(try guest.vcpu.registers().rip == RealModeGuest.codeAddress + 3)
        #expect(guest.vcpu.readyForInterruptInjection)
        guest.vcpu.requestInterruptWindow = false
        try guest.vcpu.injectInterrupt(vector: 0x21)
        try guest.vcpu.injectInterrupt(vector: 0x20)  // replaces 0x21, as in the kernel
        #expect(try guest.vcpu.run() == .io(PortIO(direction: .out, port: 0x30, size: 1, value: 0x77)))
        #expect(try guest.vcpu.registers().rsp == 0x8000 - 6)
        #expect(try guest.vcpu.run() == .io(PortIO(direction: .out, port: 0x10, size: 1, value: 0x77)))
        #expect(try guest.vcpu.run() == .halt)
    }

    @Test(arguments: Backend.available)
    func vectorsAbove255AreRejectedAndASecondInterruptIsAccepted(_ backend: Backend) throws {
        let guest = try RealModeGuest(hypervisor: backend.hypervisor(), code: [0xF4])
        try guest.vcpu.injectInterrupt(vector: 0x20)
        try guest.vcpu.injectInterrupt(vector: 0x21)
        var irq = kvm_interrupt(irq: 256)
        let error = try #require(throws: KVMError.self) { try guest.vcpu.handle.call(.interrupt, &irq) }
        #expect(error.errno == .invalidArgument)
    }
}
