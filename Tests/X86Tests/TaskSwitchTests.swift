import KVM
import Testing
@testable import X86

/// 32-bit protected mode with two tasks: the current one (TR 0x28, its TSS
/// at 0x8000, busy) and a new one (0x60, TSS at 0x9000, available), a task
/// gate to it (0x68), a 16-bit TSS at 0x9800 (0x70). The new task starts at
/// 0xC000 with EAX 0x5555, ESP 0x9F00, CS 0x08 and data 0x10. #TS, #NP,
/// #SS and #GP handlers report their error code on ports 0x3A-0x3D and halt.
///
/// Against the SDM (chapter 7, and the instruction pages of JMP, CALL, INT
/// and IRET): the host's kvm_pvm does not run task switches (its emulator
/// stops with an internal error at a far JMP to a TSS, a task gate in the
/// IDT, or IRET with NT set).
enum TaskGuest {
    static let newTSS = 0x9000, tss16 = 0x9800, newTaskCode = 0xC000
    static let current: UInt16 = 0x28, newTask: UInt16 = 0x60, taskGate: UInt16 = 0x68, task16: UInt16 = 0x70

    static func taskGateDescriptor(_ selector: UInt16, dpl: UInt8 = 0, present: Bool = true) -> UInt64 {
        UInt64(selector) << 16 | UInt64((present ? 0x80 : 0) | dpl << 5 | 0x5) << 40
    }

    static func make(code: [UInt8], task: [UInt8] = [0xE7, 0x10, 0xF4]) -> SystemGuest {
        var g = SystemGuest.protected32(code: code)
        func tss(type: UInt8, base: Int, limit: UInt32) -> UInt64 {
            SystemGuest.descriptor(type: type, dpl: 0, s: false, db: false, base: UInt32(base), limit: limit, g: false)
        }
        g.store64(tss(type: 0xB, base: SystemGuest.tssAddress, limit: 0x67), at: SystemGuest.gdt + Int(current))
        g.store64(tss(type: 0x9, base: newTSS, limit: 0x67), at: SystemGuest.gdt + Int(newTask))
        g.store64(taskGateDescriptor(newTask), at: SystemGuest.gdt + Int(taskGate))
        g.store64(tss(type: 0x1, base: tss16, limit: 0x2B), at: SystemGuest.gdt + Int(task16))
        g.special.gdt.limit = 0x77
        g.store32(UInt32(newTaskCode), at: newTSS + 0x20)  // EIP
        g.store32(0x2, at: newTSS + 0x24)                  // EFLAGS
        g.store32(0x5555, at: newTSS + 0x28)               // EAX
        g.store32(0x9F00, at: newTSS + 0x38)               // ESP
        for (i, selector) in [0x10, 0x08, 0x10, 0x10, 0x10, 0x10].enumerated() {  // ES CS SS DS FS GS
            g.store32(UInt32(selector), at: newTSS + 0x48 + 4 * i)
        }
        g.write(task, at: newTaskCode)
        for vector in 10...13 {
            let handler = SystemGuest.handlers + vector * 16
            g.write([0x58, 0xE7, UInt8(0x30 + vector), 0xF4], at: handler)  // pop eax; out 0x3X, eax; hlt
            g.gate32(vector, handler: UInt32(handler))
        }
        return g
    }

    static func tssType(_ memory: [UInt8], _ selector: UInt16) -> UInt8 { memory[SystemGuest.gdt + Int(selector) + 5] & 0xF }

    static func load32(_ memory: [UInt8], _ address: Int) -> UInt32 {
        memory[address..<address + 4].reversed().reduce(0) { $0 << 8 | UInt32($1) }
    }

    static func ljmp(_ selector: UInt16) -> [UInt8] { [0xEA, 0, 0, 0, 0, UInt8(selector & 0xFF), UInt8(selector >> 8)] }
    static func lcall(_ selector: UInt16) -> [UInt8] { [0x9A, 0, 0, 0, 0, UInt8(selector & 0xFF), UInt8(selector >> 8)] }
    static let movEAX1234: [UInt8] = [0xB8, 0x34, 0x12, 0x00, 0x00]
}

@Suite("X86 task switches")
struct TaskSwitchTests {
    /// JMP: the old task's state is saved (EIP past the JMP), its busy bit
    /// cleared; the new task is busy in the GDT and in TR, CR0.TS is set,
    /// NT and the back link are untouched.
    @Test func jumpToATSSSavesTheOldTaskAndLoadsTheNewOne() {
        let g = TaskGuest.make(code: TaskGuest.movEAX1234 + TaskGuest.ljmp(TaskGuest.newTask))
        let run = g.runOnSoftCPU(maxExits: 1)
        let step = run.steps[0]
        #expect(step.exit == "io out 0x10 size 4 value 0x5555")
        #expect(step.registers.rsp == 0x9F00 && step.registers.rflags & RFLAGS.nt == 0)
        #expect(step.special.tr.selector == TaskGuest.newTask && step.special.tr.type == 0xB)
        #expect(step.special.cr0 & ControlBits.cr0TS != 0)
        #expect(TaskGuest.load32(run.memory, SystemGuest.tssAddress + 0x20) == 0x100C, "the old EIP: past the JMP")
        #expect(TaskGuest.load32(run.memory, SystemGuest.tssAddress + 0x28) == 0x1234, "the old EAX")
        #expect(TaskGuest.load32(run.memory, SystemGuest.tssAddress + 0x4C) == 0x08, "the old CS")
        #expect(TaskGuest.tssType(run.memory, TaskGuest.current) == 0x9, "the old task is no longer busy")
        #expect(TaskGuest.tssType(run.memory, TaskGuest.newTask) == 0xB)
        #expect(TaskGuest.load32(run.memory, TaskGuest.newTSS) == 0, "no back link")
    }

    /// CALL through a task gate nests: NT set, the back link names the
    /// caller, whose TSS stays busy. IRET in the new task returns to it:
    /// the new task's busy bit is cleared, the caller resumes past its CALL.
    @Test func callThroughATaskGateNestsAndIRETReturns() {
        // Caller: mov eax, 0x1234; call 0x68:0; out 0x12, eax; hlt. Task: out 0x10, eax; pushfd; pop eax; out 0x11, eax; iretd
        let g = TaskGuest.make(code: TaskGuest.movEAX1234 + TaskGuest.lcall(TaskGuest.taskGate) + [0xE7, 0x12, 0xF4],
                               task: [0xE7, 0x10, 0x9C, 0x58, 0xE7, 0x11, 0xCF])
        let run = g.runOnSoftCPU(maxExits: 4)
        #expect(run.steps.map(\.exit) == ["io out 0x10 size 4 value 0x5555", "io out 0x11 size 4 value 0x4002",
                                          "io out 0x12 size 4 value 0x1234", "halt"])
        #expect(run.steps[1].special.tr.selector == TaskGuest.newTask)
        #expect(TaskGuest.load32(run.memory, TaskGuest.newTSS) == UInt32(TaskGuest.current), "the back link")
        let back = run.steps[2]
        #expect(back.special.tr.selector == TaskGuest.current && back.registers.rip == 0x100E)
        #expect(back.registers.rflags & RFLAGS.nt == 0)
        #expect(TaskGuest.tssType(run.memory, TaskGuest.newTask) == 0x9, "IRET leaves the nested task available")
        #expect(TaskGuest.tssType(run.memory, TaskGuest.current) == 0xB)
        #expect(TaskGuest.load32(run.memory, TaskGuest.newTSS + 0x24) & UInt32(RFLAGS.nt) == 0, "the saved EFLAGS have NT clear")
        #expect(TaskGuest.load32(run.memory, TaskGuest.newTSS + 0x20) == UInt32(TaskGuest.newTaskCode + 7), "saved EIP past the IRET")
    }

    /// INT n through a task gate in the IDT nests like CALL.
    @Test func softwareInterruptThroughATaskGate() {
        // int 0x30; out 0x12, eax; hlt
        var g = TaskGuest.make(code: TaskGuest.movEAX1234 + [0xCD, 0x30, 0xE7, 0x12, 0xF4], task: [0xE7, 0x10, 0xCF])
        g.store64(TaskGuest.taskGateDescriptor(TaskGuest.newTask), at: SystemGuest.idt + 0x30 * 8)
        let run = g.runOnSoftCPU(maxExits: 3)
        #expect(run.steps.map(\.exit) == ["io out 0x10 size 4 value 0x5555", "io out 0x12 size 4 value 0x1234", "halt"])
        #expect(TaskGuest.load32(run.memory, SystemGuest.tssAddress + 0x20) == 0x1007, "the saved EIP: past the INT")
    }

    /// An exception through a task gate pushes its error code on the new
    /// task's stack.
    @Test func exceptionThroughATaskGatePushesTheErrorCodeOnTheNewStack() {
        // mov ax, 0x103; mov ds, ax: #GP(0x100), beyond the GDT. The task: pop eax; out 0x10, eax; hlt
        var g = TaskGuest.make(code: [0x66, 0xB8, 0x03, 0x01, 0x8E, 0xD8, 0xF4], task: [0x58, 0xE7, 0x10, 0xF4])
        g.store64(TaskGuest.taskGateDescriptor(TaskGuest.newTask), at: SystemGuest.idt + 13 * 8)
        let run = g.runOnSoftCPU(maxExits: 1)
        #expect(run.steps.first?.exit == "io out 0x10 size 4 value 0x100")
        #expect(run.steps.first?.registers.rsp == 0x9F00)
        #expect(TaskGuest.load32(run.memory, SystemGuest.tssAddress + 0x20) == 0x1004, "the saved EIP: the faulting MOV")
    }

    /// A 16-bit TSS: 16-bit registers and selectors (no FS, GS or CR3),
    /// limit 0x2B.
    @Test func sixteenBitTSS() {
        var g = TaskGuest.make(code: TaskGuest.movEAX1234 + TaskGuest.ljmp(TaskGuest.task16))
        let base = TaskGuest.tss16
        g.write([0x00, 0xC0], at: base + 14)  // IP
        g.write([0x02, 0x00], at: base + 16)  // FLAGS
        g.write([0x66, 0x66], at: base + 18)  // AX
        g.write([0x00, 0x9E], at: base + 26)  // SP
        for (i, selector) in [0x10, 0x08, 0x10, 0x10].enumerated() { g.write([UInt8(selector), 0], at: base + 34 + 2 * i) }
        let run = g.runOnSoftCPU(maxExits: 1)
        #expect(run.steps.first?.exit == "io out 0x10 size 4 value 0x6666")
        #expect(run.steps.first?.registers.rsp == 0x9E00)
        #expect(run.steps.first?.special.tr.type == 0x3)
        #expect(TaskGuest.tssType(run.memory, TaskGuest.task16) == 0x3)
    }

    /// The LDT comes from the new TSS, and a data selector of that LDT loads.
    @Test func theNewTasksLDTIsLoadedBeforeItsSegments() {
        var g = TaskGuest.make(code: TaskGuest.ljmp(TaskGuest.newTask), task: [0x8C, 0xD8, 0xE7, 0x10, 0xF4])  // mov eax, ds
        g.store64(SystemGuest.descriptor(type: 0x3, dpl: 0), at: 0x6800 + 8)
        g.store32(UInt32(SystemGuest.ldt), at: TaskGuest.newTSS + 0x60)
        g.store32(0x0C, at: TaskGuest.newTSS + 0x54)  // DS: LDT entry 1
        let step = g.runOnSoftCPU(maxExits: 1).steps[0]
        #expect(step.exit == "io out 0x10 size 4 value 0xc")
        #expect(step.special.ldt.selector == SystemGuest.ldt && step.special.ldt.base == 0x6800)
    }

    @Test func crThreeComesFromTheNewTSSWhenPagingIsOn() {
        var g = TaskGuest.make(code: TaskGuest.ljmp(TaskGuest.newTask))
        g.store32(0x87, at: 0x2000)  // 32-bit paging, a 4 MiB page onto 0, in both directories
        g.store32(0x87, at: 0x3000)
        g.store32(0x3000, at: TaskGuest.newTSS + 0x1C)
        g.special.cr4 = ControlBits.cr4PSE
        g.special.cr3 = 0x2000
        let unpaged = g.runOnSoftCPU(maxExits: 1).steps[0]
        #expect(unpaged.special.cr3 == 0x2000, "without paging CR3 stays")
        g.special.cr0 |= ControlBits.cr0PG
        let paged = g.runOnSoftCPU(maxExits: 1).steps[0]
        #expect(paged.exit == "io out 0x10 size 4 value 0x5555")
        #expect(paged.special.cr3 == 0x3000)
    }

    /// The T bit of the new TSS: #DB with DR6.BT before the new task's first instruction.
    @Test func debugTrapBitRaisesDebugExceptionInTheNewTask() {
        var g = TaskGuest.make(code: TaskGuest.ljmp(TaskGuest.newTask))
        g.store32(1, at: TaskGuest.newTSS + 0x64)
        g.write([0x0F, 0x21, 0xF0, 0xE7, 0x31, 0x58, 0xE7, 0x32, 0xF4], at: SystemGuest.handlers + 0x10)  // mov eax, dr6; out 0x31; pop eax (EIP); out 0x32
        g.gate32(1, handler: UInt32(SystemGuest.handlers + 0x10))
        var dr7: UInt64 = 0
        let steps = g.runOnSoftCPU(maxExits: 2) { dr7 = $0.state.debugRegisters.dr7 }.steps
        #expect(steps.map(\.exit) == ["io out 0x31 size 4 value 0xffff8ff0", "io out 0x32 size 4 value 0xc000"])
        #expect(dr7 == 0x400)
    }

    /// Local breakpoint enables belong to a task: the switch clears L0-L3 and LE.
    @Test func taskSwitchClearsLocalBreakpointEnables() {
        let g = TaskGuest.make(code: [0xB8, 0xFF, 0x03, 0x00, 0x00, 0x0F, 0x23, 0xF8] + TaskGuest.ljmp(TaskGuest.newTask))  // dr7 = 0x3ff
        var dr7: UInt64 = 0
        _ = g.runOnSoftCPU(maxExits: 1) { dr7 = $0.state.debugRegisters.dr7 }
        #expect(dr7 == 0x6AA)
    }

    // MARK: Faults before the switch (in the old task)

    @Test func jumpToABusyTSSIsGeneralProtection() {
        let g = TaskGuest.make(code: TaskGuest.ljmp(TaskGuest.current))
        let step = g.runOnSoftCPU(maxExits: 1).steps[0]
        #expect(step.exit == "io out 0x3d size 4 value 0x28")
        #expect(step.special.tr.selector == TaskGuest.current)
    }

    @Test func tssBelowTheCPLIsGeneralProtection() {
        // The new TSS's DPL 0 against RPL 3 in the selector.
        let g = TaskGuest.make(code: TaskGuest.ljmp(TaskGuest.newTask | 3))
        #expect(g.runOnSoftCPU(maxExits: 1).steps.first?.exit == "io out 0x3d size 4 value 0x60")
    }

    @Test func absentTSSIsNotPresentFault() {
        var g = TaskGuest.make(code: TaskGuest.ljmp(TaskGuest.newTask))
        g.memory[SystemGuest.gdt + Int(TaskGuest.newTask) + 5] &= 0x7F
        #expect(g.runOnSoftCPU(maxExits: 1).steps.first?.exit == "io out 0x3b size 4 value 0x60")
    }

    @Test func absentTaskGateIsNotPresentFaultWithTheGateSelector() {
        var g = TaskGuest.make(code: TaskGuest.ljmp(TaskGuest.taskGate))
        g.store64(TaskGuest.taskGateDescriptor(TaskGuest.newTask, present: false), at: SystemGuest.gdt + Int(TaskGuest.taskGate))
        #expect(g.runOnSoftCPU(maxExits: 1).steps.first?.exit == "io out 0x3b size 4 value 0x68")
    }

    @Test func tssLimitBelow67IsInvalidTSS() {
        var g = TaskGuest.make(code: TaskGuest.ljmp(TaskGuest.newTask))
        g.memory[SystemGuest.gdt + Int(TaskGuest.newTask)] = 0x66
        let step = g.runOnSoftCPU(maxExits: 1).steps[0]
        #expect(step.exit == "io out 0x3a size 4 value 0x60")
        #expect(step.special.tr.selector == TaskGuest.current && step.registers.rip == SystemGuest.handlers + 10 * 16 + 3)
    }

    @Test func iretToATaskThatIsNotBusyIsInvalidTSS() {
        // NT set with a back link to the available TSS 0x60: iretd
        var g = TaskGuest.make(code: [0xCF])
        g.registers.rflags = 0x4002
        g.store32(UInt32(TaskGuest.newTask), at: SystemGuest.tssAddress)
        #expect(g.runOnSoftCPU(maxExits: 1).steps.first?.exit == "io out 0x3a size 4 value 0x60")
    }

    /// In IA-32e mode a far JMP to a TSS is #GP(selector).
    @Test func longModeTaskSwitchIsGeneralProtection() {
        var g = SystemGuest.long64(code: [0xFF, 0x2C, 0x25, 0x00, 0xE0, 0x00, 0x00])  // jmp far [0xe000]
        g.write([0, 0, 0, 0, 0x40, 0x00], at: SystemGuest.data)
        g.write([0x58, 0xE7, 0x3D, 0xF4], at: SystemGuest.handlers + 0x200)
        g.gate64(13, handler: UInt64(SystemGuest.handlers + 0x200))
        #expect(g.runOnSoftCPU(maxExits: 1).steps.first?.exit == "io out 0x3d size 4 value 0x40")
    }

    // MARK: Faults loading the new task (in the new task)

    /// A bad CS, SS or data segment in the new TSS faults after the switch:
    /// TR is the new task's and the fault's frame holds its EIP.
    @Test(arguments: [
        (0x4C, UInt32(0x10), "io out 0x3a size 4 value 0x10"),  // CS: a data segment, #TS
        (0x4C, 0x00, "io out 0x3a size 4 value 0x0"),            // CS: null, #TS(0)
        (0x50, 0x08, "io out 0x3a size 4 value 0x8"),            // SS: code, #TS
        (0x50, 0x23, "io out 0x3a size 4 value 0x20"),           // SS: DPL 3 at CPL 0, #TS
        (0x54, 0x0B, "io out 0x3a size 4 value 0x8"),            // DS: readable code of DPL 0 with RPL 3, #TS
        (0x54, 0x3FF8, "io out 0x3a size 4 value 0x3ff8"),       // DS: beyond the GDT, #TS
    ])
    func badSegmentInTheNewTaskIsInvalidTSS(offset: Int, selector: UInt32, exit: String) {
        var g = TaskGuest.make(code: TaskGuest.ljmp(TaskGuest.newTask))
        g.store32(selector, at: TaskGuest.newTSS + offset)
        let step = g.runOnSoftCPU(maxExits: 1).steps[0]
        #expect(step.exit == exit)
        #expect(step.special.tr.selector == TaskGuest.newTask)
    }

    @Test func absentSegmentsOfTheNewTaskAreNotPresentOrStackFaults() {
        var g = TaskGuest.make(code: TaskGuest.ljmp(TaskGuest.newTask))
        g.store64(SystemGuest.descriptor(type: 0x3, dpl: 0, present: false), at: SystemGuest.gdt + 0x78)
        g.special.gdt.limit = 0x7F
        g.store32(0x78, at: TaskGuest.newTSS + 0x54)  // DS
        #expect(g.runOnSoftCPU(maxExits: 1).steps.first?.exit == "io out 0x3b size 4 value 0x78")
        g.store32(0x10, at: TaskGuest.newTSS + 0x54)
        g.store32(0x78, at: TaskGuest.newTSS + 0x50)  // SS
        #expect(g.runOnSoftCPU(maxExits: 1).steps.first?.exit == "io out 0x3c size 4 value 0x78")
    }

    /// The new task's EIP must lie within its CS: #GP(0) in the new task.
    @Test func newEIPBeyondTheCodeLimitIsGeneralProtection() {
        var g = TaskGuest.make(code: TaskGuest.ljmp(TaskGuest.newTask))
        g.store64(SystemGuest.descriptor(type: 0xB, dpl: 0, limit: 0xFFF, g: false), at: SystemGuest.gdt + 0x78)
        g.special.gdt.limit = 0x7F
        g.store32(0x78, at: TaskGuest.newTSS + 0x4C)
        let step = g.runOnSoftCPU(maxExits: 1).steps[0]
        #expect(step.exit == "io out 0x3d size 4 value 0x0")
        #expect(step.special.tr.selector == TaskGuest.newTask)
    }
}
