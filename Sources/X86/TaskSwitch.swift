// Hardware task switches (SDM vol. 3 chapter 7): a far JMP or CALL to a
// TSS or task gate, an interrupt or exception through a task gate, IRET
// with NT set. 32-bit and 16-bit TSSs, the busy bits, the back link, NT,
// CR0.TS, CR3 and the LDT from the new TSS, and the segment loads with the
// faults of table 7-1. Not in IA-32e mode, where the callers give #GP.
//
// Checks made before the switch fault in the old task, with nothing
// changed; once the old state is saved, a fault loading the new task's
// segments is raised in the new task (SDM 7.3 steps 11-12). Where the SDM
// says nothing, this follows KVM's emulator (emulator_task_switch), which
// is what a guest of a VMX host sees.

enum TaskSwitchReason {
    case call, jump, gate, iret
}

/// The dynamic fields of a TSS, as the switch reads them from the new one.
struct TaskState {
    var cr3: UInt64 = 0
    var eip: UInt64 = 0
    var eflags: UInt64 = 0
    var registers = InlineArray<8, UInt64>(repeating: 0)
    /// ES CS SS DS FS GS, in SegmentRegisterName order.
    var selectors = InlineArray<6, UInt16>(repeating: 0)
    var ldt: UInt16 = 0
    /// The T (debug trap) bit of a 32-bit TSS.
    var trap = false
}

extension DR6 {
    /// BT: the #DB comes from the T bit of a task switched to.
    public static let bt: UInt64 = 1 << 15
}

extension X86CPU {
    /// A task switch for `reason`: to the TSS `selector` names, or, for a
    /// far JMP or CALL, to the TSS of the task gate it names. `errorCode`
    /// is an exception's, pushed on the new task's stack; `ext` is the EXT
    /// bit of the error codes of faults raised before the switch;
    /// `returnRIP` is the EIP saved for the old task.
    mutating func taskSwitch(to selector: UInt16, reason: TaskSwitchReason, errorCode: UInt32?, ext: UInt32,
                             returnRIP: UInt64) -> Bool {
        if state.efer & ControlBits.eferLMA != 0 { return fault(.gp, errorCode: UInt32(selector & 0xFFFC) | ext) }
        var tssSelector = selector
        if reason == .call || reason == .jump {
            guard let target = taskGateTarget(selector) else { return false }
            tssSelector = target
        }
        guard let descriptor = newTaskDescriptor(tssSelector, reason: reason, ext: ext) else { return false }
        let tss32 = descriptor.type & 8 != 0
        let tssErrorCode = UInt32(tssSelector & 0xFFFC) | ext
        guard descriptor.limit >= (tss32 ? 0x67 : 0x2B) else { return fault(.ts, errorCode: tssErrorCode) }
        // The old TSS must hold the state about to be saved in it.
        let oldTSS32 = state.tr.attributes & 8 != 0
        guard state.tr.limit >= (oldTSS32 ? 0x5F : 0x29) else {
            return fault(.ts, errorCode: UInt32(state.tr.selector & 0xFFFC) | ext)
        }
        guard let new = readTaskState(base: descriptor.base, tss32: tss32) else { return false }
        // Page faults on either TSS come before anything changes.
        let oldBase = state.tr.base
        guard probeSystem(oldBase &+ (oldTSS32 ? 0x20 : 14), size: oldTSS32 ? 0x40 : 28, write: true) else { return false }
        if reason == .call || reason == .gate {
            guard probeSystem(descriptor.base, size: 2, write: true) else { return false }
        }

        // The switch: from here on the old task's state is saved.
        let oldSelector = state.tr.selector
        if reason == .jump || reason == .iret {
            guard setBusy(oldSelector, false) else { return false }
        }
        var oldFlags = state.rflags
        if reason == .iret { oldFlags &= ~RFLAGS.nt }
        guard saveTaskState(base: oldBase, tss32: oldTSS32, eip: returnRIP, eflags: oldFlags) else { return false }
        var newFlags = new.eflags
        if reason == .call || reason == .gate {
            guard writeSystem(descriptor.base, UInt64(oldSelector), size: 2) else { return false }
            newFlags |= RFLAGS.nt
        }
        if reason != .iret {
            guard setBusy(tssSelector, true) else { return false }
        }
        var busy = descriptor
        busy.low |= 2 << 40
        state.tr = busy.segment(selector: tssSelector)
        state.cr0 |= ControlBits.cr0TS
        // The local breakpoint enables (L0-L3, LE) belong to the old task.
        state.debugRegisters.dr7 &= ~0x155
        refreshDebug()
        guard loadTaskState(new, flags: newFlags, tss32: tss32) else { return false }
        if let errorCode {
            let size = tss32 ? 4 : 2
            var words = FrameWords(repeating: 0)
            words[0] = UInt64(errorCode)
            guard let top = pushFrame(words, count: 1, size: size, ss: state.ss, top: state.reg(4), long: false,
                                      supervisor: state.privilegeLevel() < 3, errorCode: ext) else { return false }
            setStackPointer(top, ss: state.ss, long: false)
        }
        if state.rip > UInt64(state.cs.limit) { return fault(.gp, errorCode: 0) }
        if new.trap {
            // The T bit: a #DB trap before the new task's first instruction.
            if hostDebug.takesDebugExceptions { return exit(ownerDebugStop(DR6.bt)) }
            if let stop = deliverDebugException(DR6.bt, returnRIP: state.rip) { return exit(stop) }
        }
        return true
    }

    /// IRET with NT set outside long mode: back to the task whose selector
    /// is the current TSS's back link.
    mutating func taskReturn(_ insn: Instruction) -> Bool {
        guard let link = readSystem(state.tr.base, size: 2) else { return false }
        return taskSwitch(to: UInt16(truncatingIfNeeded: link), reason: .iret, errorCode: nil, ext: 0,
                          returnRIP: insn.nextRIP)
    }

    /// The TSS selector a far JMP or CALL switches to: the selector itself
    /// when it names a TSS (whose DPL the CPL and RPL must reach: #GP), or
    /// a task gate's TSS selector (the gate's DPL checked the same way,
    /// then its presence: #NP).
    mutating func taskGateTarget(_ selector: UInt16) -> UInt16? {
        guard let (descriptor, _) = readDescriptor(selector) else { return nil }
        let errorCode = UInt32(selector & 0xFFFC)
        let level = max(state.privilegeLevel(), UInt8(selector & 3))
        guard descriptor.dpl >= level else {
            _ = fault(.gp, errorCode: errorCode)
            return nil
        }
        guard descriptor.type == 5 else { return selector }
        guard descriptor.isPresent else {
            _ = fault(.np, errorCode: errorCode)
            return nil
        }
        return descriptor.gateSelector
    }

    /// The new task's TSS descriptor from the GDT, with the checks of the
    /// switch's source: a TSS that is available (busy for IRET) and
    /// present. A bad selector or type is #GP (#TS for IRET), absence #NP.
    mutating func newTaskDescriptor(_ selector: UInt16, reason: TaskSwitchReason, ext: UInt32) -> Descriptor? {
        let vector: Vector = reason == .iret ? .ts : .gp
        let errorCode = UInt32(selector & 0xFFFC) | ext
        guard selector & 4 == 0, UInt64(selector & 0xFFF8) + 7 <= UInt64(state.gdtr.limit) else {
            _ = fault(vector, errorCode: errorCode)
            return nil
        }
        guard let (descriptor, _) = readDescriptor(selector, vector: vector, ext: ext) else { return nil }
        // 1/9: an available 16- or 32-bit TSS, 3/B: busy.
        let wanted: UInt8 = reason == .iret ? 2 : 0
        guard descriptor.isSystem, descriptor.type & 7 == 1 | wanted else {
            _ = fault(vector, errorCode: errorCode)
            return nil
        }
        guard descriptor.isPresent else {
            _ = fault(.np, errorCode: errorCode)
            return nil
        }
        return descriptor
    }

    /// Sets or clears the busy bit of the TSS descriptor `selector` names in the GDT.
    mutating func setBusy(_ selector: UInt16, _ busy: Bool) -> Bool {
        let address = state.gdtr.base &+ UInt64(selector & 0xFFF8) &+ 5
        guard let access = readSystem(address, size: 1) else { return false }
        return writeSystem(address, busy ? access | 2 : access & ~2, size: 1)
    }

    /// Translates `size` bytes of a system table for `write` (or read), so
    /// that a page fault comes before any of them is touched.
    mutating func probeSystem(_ address: UInt64, size: Int, write: Bool) -> Bool {
        let saved = (implicitSupervisor, systemTableAccess)
        implicitSupervisor = true
        systemTableAccess = true
        defer { (implicitSupervisor, systemTableAccess) = saved }
        let first = systemAddress(address)
        let last = systemAddress(address &+ UInt64(size - 1))
        return translate(first, write ? .write : .read) != nil && translate(last, write ? .write : .read) != nil
    }

    /// Reads the dynamic fields of the TSS at `base`. A 16-bit TSS has no
    /// CR3, FS, GS or T bit.
    mutating func readTaskState(base: UInt64, tss32: Bool) -> TaskState? {
        var task = TaskState()
        if tss32 {
            guard let cr3 = readSystem(base &+ 0x1C, size: 4), let eip = readSystem(base &+ 0x20, size: 4),
                  let flags = readSystem(base &+ 0x24, size: 4), let ldt = readSystem(base &+ 0x60, size: 2),
                  let trap = readSystem(base &+ 0x64, size: 2) else { return nil }
            (task.cr3, task.eip, task.eflags) = (cr3, eip, flags)
            task.ldt = UInt16(truncatingIfNeeded: ldt)
            task.trap = trap & 1 != 0
            for i in 0..<8 {
                guard let value = readSystem(base &+ 0x28 &+ UInt64(4 * i), size: 4) else { return nil }
                task.registers[i] = value
            }
            for i in 0..<6 {
                guard let value = readSystem(base &+ 0x48 &+ UInt64(4 * i), size: 2) else { return nil }
                task.selectors[i] = UInt16(truncatingIfNeeded: value)
            }
        } else {
            guard let ip = readSystem(base &+ 14, size: 2), let flags = readSystem(base &+ 16, size: 2),
                  let ldt = readSystem(base &+ 42, size: 2) else { return nil }
            (task.eip, task.eflags) = (ip, flags)
            task.ldt = UInt16(truncatingIfNeeded: ldt)
            for i in 0..<8 {
                guard let value = readSystem(base &+ 18 &+ UInt64(2 * i), size: 2) else { return nil }
                task.registers[i] = value
            }
            // ES CS SS DS; FS and GS keep their selectors (KVM's task_switch_16).
            for i in 0..<4 {
                guard let value = readSystem(base &+ 34 &+ UInt64(2 * i), size: 2) else { return nil }
                task.selectors[i] = UInt16(truncatingIfNeeded: value)
            }
            task.selectors[4] = state.fs.selector
            task.selectors[5] = state.gs.selector
        }
        return task
    }

    /// Saves EIP, EFLAGS, the general registers and the segment selectors
    /// in the old TSS (not CR3 or the LDT selector, which are static).
    mutating func saveTaskState(base: UInt64, tss32: Bool, eip: UInt64, eflags: UInt64) -> Bool {
        let size = tss32 ? 4 : 2
        let start: UInt64 = tss32 ? 0x20 : 14
        guard writeSystem(base &+ start, eip, size: size),
              writeSystem(base &+ start &+ UInt64(size), eflags, size: size) else { return false }
        for i in 0..<8 {
            guard writeSystem(base &+ start &+ UInt64(size * (2 + i)), state.reg(i), size: size) else { return false }
        }
        let segments = tss32 ? 6 : 4
        for i in 0..<segments {
            let offset = start &+ UInt64(size * 10) &+ UInt64(size * i)
            guard writeSystem(base &+ offset, UInt64(state[segmentIndex: i].selector), size: 2) else { return false }
        }
        return true
    }

    /// Loads the new task: CR3 (32-bit TSS, paging on), EIP, EFLAGS, the
    /// general registers, then every selector, then LDTR and the segment
    /// descriptors with the task switch's checks. A fault here is raised
    /// in the new task.
    mutating func loadTaskState(_ task: TaskState, flags: UInt64, tss32: Bool) -> Bool {
        if tss32 && state.cr0 & ControlBits.cr0PG != 0 {
            if isPAEPaging(cr0: state.cr0, cr4: state.cr4) {
                guard let entries = readPDPTEs(task.cr3, check: true) else { return false }
                state.cr3 = task.cr3
                state.pdptes = entries
                state.pdptesLoaded = true
            } else {
                state.cr3 = task.cr3
            }
        }
        state.rip = task.eip
        state.rflags = flags | 2
        for i in 0..<8 { state.setReg(i, task.registers[i]) }
        // Selectors first, descriptors after: a fault leaves the later
        // registers with their new selector over the old descriptor.
        for i in 0..<6 { state[segmentIndex: i].selector = task.selectors[i] }
        state.ldtr.selector = task.ldt
        guard loadTaskLDT(task.ldt) else { return false }
        if flags & RFLAGS.vm != 0 {
            for i in 0..<6 { state[segmentIndex: i] = .virtual8086(selector: task.selectors[i]) }
            return true
        }
        let cpl = UInt8(task.selectors[SegmentRegisterName.cs.rawValue] & 3)
        // KVM's order: ES, CS, SS, DS, FS, GS.
        for index in [0, 1, 2, 3, 4, 5] {
            guard loadTaskSegment(index, selector: task.selectors[index], cpl: cpl) else { return false }
        }
        return true
    }

    /// The new task's LDT: null leaves LDTR unusable; otherwise an LDT
    /// descriptor, present, from the GDT, else #TS(selector).
    mutating func loadTaskLDT(_ selector: UInt16) -> Bool {
        if selector & 0xFFFC == 0 {
            state.ldtr = Self.nullSegment(selector)
            return true
        }
        let errorCode = UInt32(selector & 0xFFFC)
        guard selector & 4 == 0 else { return fault(.ts, errorCode: errorCode) }
        guard let (descriptor, _) = readDescriptor(selector, vector: .ts) else { return false }
        guard descriptor.isSystem, descriptor.type == 2, descriptor.isPresent else { return fault(.ts, errorCode: errorCode) }
        state.ldtr = descriptor.segment(selector: selector)
        return true
    }

    /// One segment register of the new task, at privilege `cpl` (the new
    /// CS's RPL): #TS(selector) for a selector beyond its table, a wrong
    /// type or privilege, a null CS or SS; #NP (#SS for SS) when the
    /// segment is not present. A null data segment is unusable.
    mutating func loadTaskSegment(_ index: Int, selector: UInt16, cpl: UInt8) -> Bool {
        let errorCode = UInt32(selector & 0xFFFC)
        let isCode = index == SegmentRegisterName.cs.rawValue
        let isStack = index == SegmentRegisterName.ss.rawValue
        if selector & 0xFFFC == 0 {
            if isCode || isStack { return fault(.ts, errorCode: 0) }
            state[segmentIndex: index] = Self.nullSegment(selector)
            return true
        }
        guard let (found, address) = readDescriptor(selector, vector: .ts) else { return false }
        var descriptor = found
        let rpl = UInt8(selector & 3)
        let valid: Bool
        if isCode {
            valid = descriptor.isCode && (descriptor.isConforming ? descriptor.dpl <= rpl : descriptor.dpl == rpl)
        } else if isStack {
            valid = descriptor.isWritableData && rpl == cpl && descriptor.dpl == cpl
        } else {
            valid = descriptor.isReadable && (descriptor.isConforming || (rpl <= descriptor.dpl && cpl <= descriptor.dpl))
        }
        guard valid else { return fault(.ts, errorCode: errorCode) }
        guard descriptor.isPresent else { return fault(isStack ? .ss : .np, errorCode: errorCode) }
        guard markAccessed(&descriptor, at: address) else { return false }
        state[segmentIndex: index] = descriptor.segment(selector: selector)
        return true
    }
}
